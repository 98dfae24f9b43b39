"""Named reward components, end to end: RewardServer -> RewardClient (checked, weighted) -> the trainer's
step metrics, manifest, STEP event and Prometheus; the reward-hacking warning; SAMPLE events."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from support.rollout import create_run, make_worker, process, queued_groups, submit
from support.trainer import TrainerEnv

from policyopt.client import RewardServer
from policyopt.core.errors import RewardEndpointError
from policyopt.core.outbound import LOCAL_ALLOWLIST
from policyopt.core.settings import Settings
from policyopt.core.types import EventKind, RewardEndpointInfo, Run, to_json
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import TRAINER_GROUP, WorkQueue, groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput
from policyopt.workers.rollout.reward_components import combine
from policyopt.workers.train.reward_watch import RewardHackingWatch

GROUP = ScoreInput(run_id="r", prompt_id="p", prompt="2+3?", completions=["5", "<b>5</b>", "six"])


def graded(prompt: str, completion: str, metadata: object) -> dict[str, float]:
    return {"correct": float("5" in completion), "format": float(completion.startswith("<"))}


def test_a_reward_function_returning_dicts_gives_weighted_totals_and_per_completion_components() -> None:
    client = RewardClient(Settings(endpoint_allowlist=LOCAL_ALLOWLIST))
    with RewardServer(graded, weights={"format": 0.5}) as server:
        scored = client.score_group(RewardEndpointInfo("ep", server.address), GROUP)
    assert scored.totals == [1.0, 1.5, 0.0]  # correct*1.0 + format*0.5
    assert scored.components == [
        {"correct": 1.0, "format": 0.0},
        {"correct": 1.0, "format": 1.0},
        {"correct": 0.0, "format": 0.0},
    ]


@pytest.mark.parametrize(
    ("components", "weights", "expected"),
    [
        ({"correct": [1.0, math.nan]}, {}, "non-finite component 'correct'"),
        ({"correct": [1.0]}, {}, "returned 1 component 'correct' for 2"),
        ({f"c{i}": [0.0, 0.0] for i in range(17)}, {}, "at most 16"),
        ({"bad name!": [0.0, 0.0]}, {}, "named 'bad name!'"),
        ({"correct": [0.0, 0.0]}, {"other": 2.0}, "weights for components it did not return"),
        ({"correct": [0.0, 0.0]}, {"correct": math.inf}, "non-finite weights"),
    ],
)
def test_bad_components_are_a_permanent_error_that_says_what_to_fix(
    components: dict[str, list[float]], weights: dict[str, float], expected: str
) -> None:
    with pytest.raises(RewardEndpointError, match=expected) as info:
        combine("ep", [], components, weights, 2)
    assert not info.value.transient


def test_scores_given_with_components_are_the_totals() -> None:
    scored = combine("ep", [3.0, 4.0], {"correct": [1.0, 0.0]}, {"correct": 10.0}, 2)
    assert scored.totals == [3.0, 4.0] and scored.components[1] == {"correct": 0.0}


def test_the_hacking_warning_fires_when_the_total_rises_while_correctness_falls() -> None:
    watch = RewardHackingWatch(window=8)
    warnings = []
    for step in range(8):  # format reward grows faster than correctness shrinks
        total, correct = 0.4 + 0.05 * step, 0.6 - 0.04 * step
        warnings.append(watch.observe("run", {"reward/mean": total, "reward/component/correct": correct}))
    assert warnings[:7] == [None] * 7
    assert warnings[7] is not None and warnings[7].name == "reward_hacking"
    assert "'correct'" in warnings[7].message and "+0.200" in warnings[7].message


def test_the_hacking_warning_stays_quiet_on_healthy_and_noisy_runs() -> None:
    healthy, noisy, named = RewardHackingWatch(), RewardHackingWatch(), RewardHackingWatch()
    jitter = [0.05, -0.05, 0.04, -0.03, 0.05, -0.04, 0.03, -0.05] * 3
    for step in range(24):
        rising = {"reward/mean": 0.2 + 0.03 * step, "reward/component/correct": 0.1 + 0.03 * step}
        assert healthy.observe("run", rising) is None
        flat = {"reward/mean": 0.5 + jitter[step], "reward/component/correct": 0.5 - jitter[step]}
        assert noisy.observe("run", flat) is None
        # the run names "exact" as its correctness component: "correct" falling is not watched
        other = {"reward/mean": 0.2 + 0.05 * step, "reward/component/correct": 1 - 0.05 * step,
                 "reward/component/exact": 0.2 + 0.05 * step}  # fmt: skip
        assert named.observe("run", other, "exact") is None


def _push(env: TrainerEnv, run: Run, n: int, correct: float, fmt: float) -> None:
    WorkQueue(env.r)
    stream = groups_stream(run.run_id)
    with contextlib.suppress(redis.ResponseError):
        env.r.xgroup_create(stream, TRAINER_GROUP, id="0", mkstream=True)
    for _ in range(n):
        group = env.make_group(run)
        trajectories = [
            replace(t, reward=correct * (i % 2) + fmt, text=f"completion {i}",
                    reward_components={"correct": correct * (i % 2), "format": fmt})
            for i, t in enumerate(group.trajectories)
        ]  # fmt: skip
        env.r.xadd(stream, {"data": to_json(replace(group, trajectories=trajectories))})


def test_component_means_reach_the_manifest_step_event_and_prometheus_and_samples_are_kept(
    trainer_env: TrainerEnv,
) -> None:
    run = trainer_env.create_run(sample_every=2, correctness_component="correct")
    worker = trainer_env.worker()
    worker.steps.hacking = RewardHackingWatch(window=2)
    _push(trainer_env, run, 2, correct=1.0, fmt=0.0)
    assert worker.train_once(run.run_id) is True
    _push(trainer_env, run, 2, correct=0.0, fmt=1.0)
    assert worker.train_once(run.run_id) is True

    manifest = LocalAdapterStore(trainer_env.settings.adapter_root).read_manifest(run.run_id, 2)
    assert manifest.metrics["reward/component/format"] == 1.0
    assert manifest.metrics["reward/component/correct"] == 0.0
    gauge = REGISTRY.get_sample_value(
        "policyopt_trainer_reward_component_mean", {"run_id": run.run_id, "component": "format"}
    )
    assert gauge == 1.0
    events = RunStore(trainer_env.r).read_events(run.run_id, "0", count=50)
    steps = [e for e in events if e.kind == EventKind.STEP]
    assert [e.metrics["reward/component/correct"] for e in steps] == [pytest.approx(1 / 3), 0.0]
    samples = [e for e in events if e.kind == EventKind.SAMPLE]
    assert [e.version for e in samples] == [2]  # every 2 steps
    assert len(samples[0].samples) == 2 and samples[0].samples[0].components["format"] == 1.0
    assert samples[0].samples[0].completion == "completion 0" and samples[0].samples[0].prompt
    warnings = [e for e in events if e.kind == EventKind.WARNING and "reward_hacking" in e.message]
    assert len(warnings) == 1 and warnings[0].version == 2


def test_the_rollout_worker_stores_each_completions_components_beside_the_weighted_total(
    fresh_redis_url: str,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    tmp_path: Path,
    local_policy: dict[str, tuple[str, ...]],
) -> None:
    settings = Settings(
        redis_url=fresh_redis_url, data_dir=str(tmp_path), device="cpu", torch_threads=1, **local_policy
    )

    def length_graded(prompt: str, completion: str, metadata: object) -> dict[str, float]:
        return {"correct": float(len(completion) % 2), "length": float(len(completion))}

    with RewardServer(length_graded, weights={"length": 0.01}) as endpoint:
        run_id = create_run(fresh_redis, tiny_model_dir, endpoint.address)
        submit(fresh_redis, run_id, n=1)
        assert process(make_worker(settings, fresh_redis)) == 1
    (group,) = queued_groups(fresh_redis, run_id)
    for trajectory in group.trajectories:
        expected = {"correct": float(len(trajectory.text) % 2), "length": float(len(trajectory.text))}
        assert trajectory.reward_components == expected
        assert trajectory.reward == pytest.approx(expected["correct"] + 0.01 * expected["length"])
