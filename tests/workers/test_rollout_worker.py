"""RolloutWorker with real parts: embedded Valkey, a tiny Llama, a RewardService over gRPC."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rollout_support import ScriptedRewardService, dead_address, make_adapter, reward_server

from policyopt.core.settings import Settings
from policyopt.core.types import (
    AdapterManifest,
    EventKind,
    MethodChoice,
    PromptTask,
    RunConfig,
    RunStatus,
    TeacherConfig,
    TrajectoryGroup,
    from_json,
)
from policyopt.core.valkey import EmbeddedValkey
from policyopt.workers.adapters import LocalAdapterStore
from policyopt.workers.queue import PROMPTS_STREAM, ROLLOUT_GROUP, TRAINER_GROUP, WorkQueue, groups_stream
from policyopt.workers.rollout.worker import RolloutWorker
from policyopt.workers.store import RewardEndpointInfo, RunStore

TENANT = "acme"


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny model (tests/conftest.py); read-only here."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("rollout-valkey"), appendonly=False) as server:
        yield server


@pytest.fixture
def r(valkey: EmbeddedValkey) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(valkey: EmbeddedValkey, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=valkey.url, data_dir=str(tmp_path), device="cpu", torch_threads=1,
        reward_retries=1, reward_timeout_s=2.0, claim_idle_ms=60000,
    )  # fmt: skip


@pytest.fixture
def service() -> Iterator[tuple[ScriptedRewardService, str]]:
    scripted = ScriptedRewardService()
    with reward_server(scripted) as address:
        yield scripted, address


def make_worker(
    settings: Settings, r: redis.Redis, consumer: str = "w1", **overrides: object
) -> RolloutWorker:
    worker = RolloutWorker(settings.replace(**overrides), redis_client=r, consumer=consumer)
    worker.rewards.backoff_s = 0.01
    return worker


def create_run(r: redis.Redis, tiny_dir: Path, address: str, endpoint: str = "ep", **config: object) -> str:
    store = RunStore(r)
    store.register_endpoint(TENANT, RewardEndpointInfo(endpoint, address))
    defaults: dict[str, object] = {"group_size": 3, "max_new_tokens": 6}
    run_config = RunConfig(base_model=str(tiny_dir), reward_endpoint=endpoint, **{**defaults, **config})  # type: ignore[arg-type]
    return store.create_run(TENANT, run_config).run_id


def submit(
    r: redis.Redis, run_id: str, n: int = 1, prefix: str = "p", trace: dict[str, str] | None = None
) -> list[str]:
    tasks = [
        PromptTask(
            run_id=run_id,
            prompt_id=f"{prefix}{i}",
            prompt=f"What is {i} + 2?",
            metadata={"answer": str(i + 2)},
            trace=trace or {},
        )
        for i in range(n)
    ]
    return WorkQueue(r).enqueue_prompts(tasks)


def queued_groups(r: redis.Redis, run_id: str) -> list[TrajectoryGroup]:
    return [from_json(TrajectoryGroup, fields[b"data"]) for _id, fields in r.xrange(groups_stream(run_id))]


def pending_prompts(r: redis.Redis) -> int:
    return int(r.xpending(PROMPTS_STREAM, ROLLOUT_GROUP)["pending"])


def error_messages(r: redis.Redis, run_id: str) -> list[str]:
    return [e.message for e in RunStore(r).read_events(run_id) if e.kind == EventKind.ERROR]


def test_a_scored_group_lands_in_the_groups_stream_and_the_prompt_is_acked(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    scripted, address = service
    run_id = create_run(r, tiny_dir, address)
    submit(r, run_id, n=2)
    worker = make_worker(settings, r)
    assert worker.process_one(block_ms=100) == 2
    groups = queued_groups(r, run_id)
    assert sorted(g.prompt_id for g in groups) == ["p0", "p1"]
    for group in groups:
        assert group.adapter_version == 0 and len(group.trajectories) == 3
        assert [t.reward for t in group.trajectories] == [float(len(t.text)) for t in group.trajectories]
        for traj in group.trajectories:
            assert len(traj.sampler_logprobs) == len(traj.completion_ids) > 0
            assert all(math.isfinite(x) and x <= 0 for x in traj.sampler_logprobs)
    assert pending_prompts(r) == 0 and r.xlen(PROMPTS_STREAM) == 0
    assert WorkQueue(r).queued_prompts(run_id) == 0
    assert len(scripted.requests) == 2 and scripted.metadata_of(0)["answer"] in ("2", "3")


def test_nan_scores_become_an_error_event_and_the_worker_goes_on(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    _, good_address = service
    nan_service = ScriptedRewardService(fn=lambda req, ctx: [math.nan] * len(req.completions))
    with reward_server(nan_service) as nan_address:
        bad_run = create_run(r, tiny_dir, nan_address, endpoint="nan-ep")
        good_run = create_run(r, tiny_dir, good_address, endpoint="good-ep")
        submit(r, bad_run, n=1, prefix="bad")
        submit(r, good_run, n=1, prefix="good")
        worker = make_worker(settings, r)
        while worker.process_one(block_ms=100):
            pass
    (message,) = error_messages(r, bad_run)
    assert "bad0" in message and "non-finite" in message and "nan-ep" in message
    assert queued_groups(r, bad_run) == []
    assert [g.prompt_id for g in queued_groups(r, good_run)] == ["good0"]
    assert pending_prompts(r) == 0


def test_a_dead_endpoint_is_an_error_after_retries(
    settings: Settings, r: redis.Redis, tiny_dir: Path
) -> None:
    run_id = create_run(r, tiny_dir, dead_address())
    submit(r, run_id, n=1)
    make_worker(settings, r).process_one(block_ms=100)
    (message,) = error_messages(r, run_id)
    assert "failed 2 times" in message and "reachable" in message
    assert queued_groups(r, run_id) == [] and pending_prompts(r) == 0


def test_a_prompt_of_a_dead_worker_is_claimed_by_another(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    _, address = service
    run_id = create_run(r, tiny_dir, address)
    submit(r, run_id, n=1)
    dead = WorkQueue(r, claim_idle_ms=100)
    assert len(dead.claim_prompts("dead-worker", count=1, block_ms=100)) == 1  # claimed, then the worker died
    assert pending_prompts(r) == 1
    survivor = make_worker(settings, r, consumer="w2", claim_idle_ms=100)
    time.sleep(0.2)
    assert survivor.process_one(block_ms=100) == 1
    assert [g.prompt_id for g in queued_groups(r, run_id)] == ["p0"]
    assert pending_prompts(r) == 0


def test_prompts_of_a_run_that_is_not_running_are_dropped(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    scripted, address = service
    run_id = create_run(r, tiny_dir, address)
    submit(r, run_id, n=2)
    RunStore(r).set_status(run_id, RunStatus.CANCELLED)
    make_worker(settings, r).process_one(block_ms=100)
    assert queued_groups(r, run_id) == [] and pending_prompts(r) == 0 and scripted.requests == []


def test_rollouts_use_and_record_the_newest_adapter_version(
    settings: Settings,
    r: redis.Redis,
    tiny_dir: Path,
    service: tuple[ScriptedRewardService, str],
    tmp_path: Path,
) -> None:
    scripted, address = service
    run_id = create_run(r, tiny_dir, address)
    files = make_adapter(tiny_dir, tmp_path / "lora", seed=3)
    manifest = AdapterManifest(run_id=run_id, version=1, step=1, base_model=str(tiny_dir), method="grpo")
    LocalAdapterStore(settings.adapter_root).publish(run_id, 1, files, manifest)
    RunStore(r).commit_step(WorkQueue(r), manifest, [])
    submit(r, run_id, n=1)
    make_worker(settings, r).process_one(block_ms=100)
    (group,) = queued_groups(r, run_id)
    assert group.adapter_version == 1 and {t.version for t in group.trajectories} == {1}
    assert scripted.requests[0].adapter_version == 1


def test_remax_runs_get_a_scored_greedy_baseline(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    scripted, address = service
    run_id = create_run(r, tiny_dir, address, method=MethodChoice(preset="remax"))
    submit(r, run_id, n=1)
    make_worker(settings, r).process_one(block_ms=100)
    (group,) = queued_groups(r, run_id)
    assert len(scripted.requests) == 2  # the group, then the greedy completion
    assert group.baseline_reward == float(len(scripted.requests[1].completions[0]))


def test_pure_distillation_runs_sample_without_a_reward_endpoint(
    settings: Settings, r: redis.Redis, tiny_dir: Path
) -> None:
    config = RunConfig(
        base_model=str(tiny_dir), group_size=3, max_new_tokens=6, method=MethodChoice(preset="opd"),
        teacher=TeacherConfig(model=str(tiny_dir), coef=1.0),
    )  # fmt: skip
    run_id = RunStore(r).create_run(TENANT, config).run_id
    submit(r, run_id, n=1)
    assert make_worker(settings, r).process_one(block_ms=100) == 1
    (group,) = queued_groups(r, run_id)
    assert [t.reward for t in group.trajectories] == [0.0, 0.0, 0.0]
    assert not error_messages(r, run_id)


def test_run_forever_finishes_the_prompt_in_hand_when_stopped(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    _, address = service
    run_id = create_run(r, tiny_dir, address)
    worker = make_worker(settings, r)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    submit(r, run_id, n=1)
    deadline = time.monotonic() + 60
    while not queued_groups(r, run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(queued_groups(r, run_id)) == 1 and pending_prompts(r) == 0
    assert r.xinfo_groups(groups_stream(run_id))[0]["name"].decode() == TRAINER_GROUP


def test_the_trace_context_travels_from_the_prompt_to_the_group(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    _, address = service
    run_id = create_run(r, tiny_dir, address)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    submit(r, run_id, n=1, trace={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    make_worker(settings, r).process_one(block_ms=100)
    (group,) = queued_groups(r, run_id)
    assert trace_id in group.trace["traceparent"]


@pytest.mark.slow
def test_sigterm_lets_the_worker_process_exit_cleanly(
    settings: Settings, r: redis.Redis, tiny_dir: Path, service: tuple[ScriptedRewardService, str]
) -> None:
    _, address = service
    run_id = create_run(r, tiny_dir, address)
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "POLICYOPT_DATA_DIR": settings.data_dir,
           "POLICYOPT_TORCH_THREADS": "1", "POLICYOPT_DEVICE": "cpu"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "policyopt.workers.rollout"], env=env)
    try:
        submit(r, run_id, n=1)
        deadline = time.monotonic() + 120
        while not queued_groups(r, run_id) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(queued_groups(r, run_id)) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pending_prompts(r) == 0
