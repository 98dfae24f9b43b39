"""RolloutWorker with real parts: embedded Valkey, a tiny Llama, a RewardService over gRPC."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from support.rollout import (
    TENANT,
    ScriptedRewardService,
    create_run,
    dead_address,
    error_messages,
    make_adapter,
    make_worker,
    pending_prompts,
    process,
    queued_groups,
    reward_server,
    submit,
)

from policyopt.core.settings import Settings
from policyopt.core.types import (
    AdapterManifest,
    MethodChoice,
    RunConfig,
    RunStatus,
    TeacherConfig,
)
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import TRAINER_GROUP, WorkQueue, groups_stream, prompts_stream
from policyopt.state.runs import RunStore


def test_a_scored_group_lands_in_the_groups_stream_and_the_prompt_is_acked(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    scripted, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    submit(fresh_redis, run_id, n=2)
    worker = make_worker(settings, fresh_redis)
    assert process(worker) == 2
    groups = queued_groups(fresh_redis, run_id)
    assert sorted(g.prompt_id for g in groups) == ["p0", "p1"]
    for group in groups:
        assert group.adapter_version == 0 and len(group.trajectories) == 3
        assert [t.reward for t in group.trajectories] == [float(len(t.text)) for t in group.trajectories]
        for traj in group.trajectories:
            assert len(traj.sampler_logprobs) == len(traj.completion_ids) > 0
            assert all(math.isfinite(x) and x <= 0 for x in traj.sampler_logprobs)
    assert pending_prompts(fresh_redis, run_id) == 0 and fresh_redis.xlen(prompts_stream(run_id)) == 0
    assert WorkQueue(fresh_redis).queued_prompts(run_id) == 0
    assert len(scripted.requests) == 2 and scripted.metadata_of(0)["answer"] in ("2", "3")


def test_nan_scores_become_an_error_event_and_the_worker_goes_on(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, good_address = service
    nan_service = ScriptedRewardService(fn=lambda req, ctx: [math.nan] * len(req.completions))
    with reward_server(nan_service) as nan_address:
        bad_run = create_run(fresh_redis, tiny_model_dir, nan_address, endpoint="nan-ep")
        good_run = create_run(fresh_redis, tiny_model_dir, good_address, endpoint="good-ep")
        submit(fresh_redis, bad_run, n=1, prefix="bad")
        submit(fresh_redis, good_run, n=1, prefix="good")
        worker = make_worker(settings, fresh_redis)
        while process(worker):
            pass
    (message,) = error_messages(fresh_redis, bad_run)
    assert "bad0" in message and "non-finite" in message and "nan-ep" in message
    assert queued_groups(fresh_redis, bad_run) == []
    assert [g.prompt_id for g in queued_groups(fresh_redis, good_run)] == ["good0"]
    assert pending_prompts(fresh_redis, bad_run) == pending_prompts(fresh_redis, good_run) == 0


def test_a_dead_endpoint_is_retried_then_dropped_after_the_last_attempt(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    run_id = create_run(fresh_redis, tiny_model_dir, dead_address())
    submit(fresh_redis, run_id, n=1)
    worker = make_worker(settings, fresh_redis, reward_max_attempts=3, reward_retry_backoff_s=0.05)
    deadline = time.monotonic() + 60
    while not error_messages(fresh_redis, run_id) and time.monotonic() < deadline:
        process(worker)
    (message,) = error_messages(fresh_redis, run_id)
    assert (
        "p0 dropped after 3 rollouts" in message and "could not score" in message and "unreachable" in message
    )
    assert queued_groups(fresh_redis, run_id) == [] and pending_prompts(fresh_redis, run_id) == 0
    assert (
        WorkQueue(fresh_redis).queued_prompts(run_id) == 0 and WorkQueue(fresh_redis).delayed_prompts() == []
    )


def test_a_prompt_of_a_dead_worker_is_claimed_by_another(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    submit(fresh_redis, run_id, n=1)
    dead = WorkQueue(fresh_redis, claim_idle_ms=100)
    assert len(dead.claim_prompts("dead-worker", count=1, block_ms=100)) == 1  # claimed, then the worker died
    assert pending_prompts(fresh_redis, run_id) == 1
    survivor = make_worker(settings, fresh_redis, consumer="w2", claim_idle_ms=100)
    time.sleep(0.2)
    assert process(survivor) == 1
    assert [g.prompt_id for g in queued_groups(fresh_redis, run_id)] == ["p0"]
    assert pending_prompts(fresh_redis, run_id) == 0


def test_prompts_of_a_run_that_is_not_running_are_dropped(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    scripted, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    submit(fresh_redis, run_id, n=2)
    RunStore(fresh_redis).set_status(run_id, RunStatus.CANCELLED)
    process(make_worker(settings, fresh_redis))
    assert (
        queued_groups(fresh_redis, run_id) == []
        and pending_prompts(fresh_redis, run_id) == 0
        and scripted.requests == []
    )


def test_rollouts_use_and_record_the_newest_adapter_version(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
    tmp_path: Path,
) -> None:
    scripted, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    files = make_adapter(tiny_model_dir, tmp_path / "lora", seed=3)
    manifest = AdapterManifest(
        run_id=run_id, version=1, step=1, base_model=str(tiny_model_dir), method="grpo"
    )
    LocalAdapterStore(settings.adapter_root).publish(run_id, 1, files, manifest)
    RunStore(fresh_redis).commit_step(WorkQueue(fresh_redis), manifest, [])
    submit(fresh_redis, run_id, n=1)
    process(make_worker(settings, fresh_redis))
    (group,) = queued_groups(fresh_redis, run_id)
    assert group.adapter_version == 1 and {t.version for t in group.trajectories} == {1}
    assert scripted.requests[0].adapter_version == 1


def test_remax_runs_get_a_scored_greedy_baseline(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    scripted, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address, method=MethodChoice(preset="remax"))
    submit(fresh_redis, run_id, n=1)
    process(make_worker(settings, fresh_redis))
    (group,) = queued_groups(fresh_redis, run_id)
    assert len(scripted.requests) == 2  # the group, then the greedy completion
    assert group.baseline_reward == float(len(scripted.requests[1].completions[0]))


def test_pure_distillation_runs_sample_without_a_reward_endpoint(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    config = RunConfig(
        base_model=str(tiny_model_dir), group_size=3, max_new_tokens=6, method=MethodChoice(preset="opd"),
        teacher=TeacherConfig(model=str(tiny_model_dir), coef=1.0),
    )  # fmt: skip
    run_id = RunStore(fresh_redis).create_run(TENANT, config).run_id
    submit(fresh_redis, run_id, n=1)
    assert process(make_worker(settings, fresh_redis)) == 1
    (group,) = queued_groups(fresh_redis, run_id)
    assert [t.reward for t in group.trajectories] == [0.0, 0.0, 0.0]
    assert not error_messages(fresh_redis, run_id)


def test_run_forever_finishes_the_prompt_in_hand_when_stopped(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    worker = make_worker(settings, fresh_redis)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    submit(fresh_redis, run_id, n=1)
    deadline = time.monotonic() + 60
    while not queued_groups(fresh_redis, run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(queued_groups(fresh_redis, run_id)) == 1 and pending_prompts(fresh_redis, run_id) == 0
    assert fresh_redis.xinfo_groups(groups_stream(run_id))[0]["name"].decode() == TRAINER_GROUP


def test_the_trace_context_travels_from_the_prompt_to_the_group(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    submit(fresh_redis, run_id, n=1, trace={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    process(make_worker(settings, fresh_redis))
    (group,) = queued_groups(fresh_redis, run_id)
    assert trace_id in group.trace["traceparent"]


@pytest.mark.slow
def test_sigterm_lets_the_worker_process_exit_cleanly(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "POLICYOPT_DATA_DIR": settings.data_dir,
           "POLICYOPT_TORCH_THREADS": "1", "POLICYOPT_DEVICE": "cpu",
           "POLICYOPT_ENDPOINT_ALLOWLIST": ",".join(settings.endpoint_allowlist),
           "POLICYOPT_MODEL_ROOTS": os.pathsep.join(settings.model_roots),
           "POLICYOPT_HTTP_PORT": "0"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "policyopt.workers.rollout"], env=env)
    try:
        submit(fresh_redis, run_id, n=1)
        deadline = time.monotonic() + 120
        while not queued_groups(fresh_redis, run_id) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(queued_groups(fresh_redis, run_id)) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pending_prompts(fresh_redis, run_id) == 0
