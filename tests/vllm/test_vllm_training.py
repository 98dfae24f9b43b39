"""End to end with vLLM rollouts: two GRPO steps whose trajectories come from a real vLLM server.

The rollout worker samples with ``engine="vllm"``; the trainer trains on what vLLM stored (token ids and
processed log-probs) and publishes versions 1 and 2, which vLLM then serves by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
import torch
from support.vllm import LOGPROB_TOLERANCE, recompute_logprobs, wait_until

from policyopt.client import RewardServer
from policyopt.core.settings import Settings
from policyopt.core.types import PromptTask, RewardEndpointInfo, RunConfig, TrajectoryGroup
from policyopt.state.adapter_store import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms import DiagnosticWarning
from policyopt.workers.engines import AdapterRef
from policyopt.workers.engines.vllm_engine import VLLMEngine
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.rollout.worker import RolloutWorker
from policyopt.workers.train.session import Updater, build_updater
from policyopt.workers.train.worker import TrainerWorker

pytestmark = pytest.mark.vllm

STEP_TIMEOUT_S = 240.0
PROMPTS = ["What is 2 + 3?", "What is 10 + 4?", "hello world", "compute 7 times 6"]


def digit_share(prompt: str, completion: str, metadata: dict[str, object]) -> float:
    """Share of digits in the completion: varies between samples, so GRPO advantages are non-zero."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


class RecordingUpdater:
    """The trainer's real updater, keeping the groups of each step for the test to inspect."""

    def __init__(self, inner: Updater, steps: list[list[TrajectoryGroup]]) -> None:
        self.inner, self.steps = inner, steps
        self.critic = inner.critic

    @property
    def last_warnings(self) -> Sequence[DiagnosticWarning]:
        return self.inner.last_warnings

    def step(
        self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        self.steps.append(list(groups))
        return self.inner.step(groups, should_continue)

    def state_dict(self) -> dict[str, object]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.inner.load_state_dict(state)


@pytest.fixture
def workers(
    fresh_redis_url: str, fresh_redis: redis.Redis, vllm_server: VLLMServer, tmp_path: Path,
    local_policy: dict[str, tuple[str, ...]],
) -> Iterator[tuple[Settings, list[list[TrajectoryGroup]]]]:  # fmt: skip
    settings = Settings(
        redis_url=fresh_redis_url, data_dir=str(tmp_path / "data"), device="cpu", torch_threads=1,
        dtype="float32",  # vLLM samples the tiny model in fp32; auto would train bf16 on this CPU
        vllm_urls=(vllm_server.url,), **local_policy,
    )  # fmt: skip
    steps: list[list[TrajectoryGroup]] = []
    rollout = RolloutWorker(settings, redis_client=fresh_redis)
    trainer = TrainerWorker(
        settings, redis_client=fresh_redis, block_ms=200,
        updater_factory=lambda *args, **kwargs: RecordingUpdater(build_updater(*args, **kwargs), steps),
    )  # fmt: skip
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,), daemon=True) for w in (rollout, trainer)]
    for thread in threads:
        thread.start()
    yield settings, steps
    stop.set()
    for thread in threads:
        thread.join(30)
    rollout.close()


def test_two_training_steps_with_vllm_rollouts(
    workers: tuple[Settings, list[list[TrajectoryGroup]]], fresh_redis: redis.Redis, vllm_server: VLLMServer,
    tiny_model_dir: Path,
) -> None:  # fmt: skip
    settings, steps = workers
    runs, queue = RunStore(fresh_redis), WorkQueue(fresh_redis)
    with RewardServer(digit_share) as reward:
        runs.register_endpoint("tenant", RewardEndpointInfo("digits", reward.address))
        config = RunConfig(
            base_model=str(tiny_model_dir), reward_endpoint="digits", engine="vllm", group_size=4,
            prompts_per_step=2, max_new_tokens=16, learning_rate=2e-2, max_steps=2,
        )  # fmt: skip
        run_id = runs.create_run("tenant", config).run_id
        for version, batch in ((1, PROMPTS[:2]), (2, PROMPTS[2:])):  # step 2's prompts are sampled with v1
            queue.enqueue_prompts([PromptTask(run_id, f"p{version}-{i}", p) for i, p in enumerate(batch)])
            assert wait_until(lambda v=version: runs.get_run(run_id).version >= v, STEP_TIMEOUT_S), (
                runs.read_events(run_id)
            )

    store = LocalAdapterStore(settings.adapter_root)
    v1, v2 = store.version_dir(run_id, 1), store.version_dir(run_id, 2)
    _check_stored_logprobs_match_the_trainer(steps[1], tiny_model_dir, v1)
    mismatch = runs.get_version(run_id, 2).metrics.get("trajectory/mismatch_abs_logprob_diff")
    assert mismatch is None or mismatch < LOGPROB_TOLERANCE

    engine = VLLMEngine(tiny_model_dir, urls=[vllm_server.url])
    prompts = [engine.encode_chat(p) for p in PROMPTS]
    base = engine.greedy(prompts, 12)
    tuned = engine.greedy(prompts, 12, adapter=AdapterRef(run_id, 2, v2))
    assert f"{run_id}@v2" in vllm_server.client().loaded_adapters()
    gap = max(
        abs(a - b)
        for s, t in zip(base, tuned, strict=True)
        for a, b in zip(s.sampler_logprobs, t.sampler_logprobs, strict=False)
    )
    assert gap > 1e-3 or [s.completion_ids for s in base] != [t.completion_ids for t in tuned]


def _check_stored_logprobs_match_the_trainer(
    groups: list[TrajectoryGroup], model_dir: Path, v1: Path
) -> None:
    """Step 2 trained on trajectories vLLM sampled with version 1; recompute them with transformers+peft."""
    assert groups and all(g.adapter_version == 1 for g in groups)
    diffs = []
    for group in groups:
        for trajectory in group.trajectories:
            assert trajectory.version == 1 and len(trajectory.completion_ids) == len(
                trajectory.sampler_logprobs
            )
            expected = recompute_logprobs(model_dir, v1, group.prompt_ids, trajectory.completion_ids)
            diffs.append((torch.tensor(trajectory.sampler_logprobs) - expected).abs())
    diff = torch.cat(diffs)
    print(
        f"stored v1 log-probs vs transformers+peft: max {diff.max():.2e} mean {diff.mean():.2e} ({diff.numel()} tokens)"
    )
    assert diff.max() < LOGPROB_TOLERANCE
