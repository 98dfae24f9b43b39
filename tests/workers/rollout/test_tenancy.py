"""The rollout worker with many tenants: one bad reward endpoint delays only its own run, failures are
retried or dropped as they deserve, and no prompt is lost (embedded Valkey, tiny Llama, real gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis
from support.rollout import (
    TENANT,
    ScriptedRewardService,
    aborting,
    create_run,
    error_messages,
    hanging,
    make_worker,
    pending_prompts,
    process,
    queued_groups,
    reward_server,
    submit,
)

from policyopt.core.settings import Settings
from policyopt.core.types import PromptTask, RewardEndpointInfo, to_json
from policyopt.state.queue import PROMPTS_STREAM, ROLLOUT_GROUP, WorkQueue, prompts_stream
from policyopt.state.runs import RunStore
from policyopt.workers.rollout.worker import RolloutWorker

HEALTHY_RUN_BOUND_S = 30.0
"""A run on a healthy endpoint gets its groups within this, whatever another run's endpoint does."""


@contextmanager
def running(worker: RolloutWorker) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()


def wait_for(condition: object, timeout_s: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


def accounted(fresh_redis: redis.Redis, run_id: str) -> int:
    """Prompts of the run that are still queued: in its stream or delayed."""
    delayed = [t for _, t in WorkQueue(fresh_redis).delayed_prompts() if t.run_id == run_id]
    return int(fresh_redis.xlen(prompts_stream(run_id))) + len(delayed)


def test_an_endpoint_that_never_answers_delays_only_its_own_run(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, healthy_address = service
    release = threading.Event()
    stuck = ScriptedRewardService(fn=hanging(release))
    with reward_server(stuck, workers=16) as stuck_address:
        stuck_run = create_run(fresh_redis, tiny_model_dir, stuck_address, endpoint="stuck")
        RunStore(fresh_redis).register_endpoint(
            TENANT, RewardEndpointInfo("stuck", stuck_address, timeout_s=120)
        )
        healthy_run = create_run(fresh_redis, tiny_model_dir, healthy_address, endpoint="healthy")
        submit(fresh_redis, stuck_run, n=16, prefix="s")  # first, and many
        worker = make_worker(settings, fresh_redis, reward_concurrency=2)
        worker.shutdown_grace_s = 0.5
        try:
            with running(worker):
                time.sleep(0.5)  # the stuck run's first batch is out
                submit(fresh_redis, healthy_run, n=4, prefix="h")
                took = wait_for(
                    lambda: len(queued_groups(fresh_redis, healthy_run)) == 4, HEALTHY_RUN_BOUND_S
                )
                assert len(stuck.requests) <= 2  # its lane holds 2 calls; the rest wait or went back
        finally:
            release.set()
            worker.close()
    print(f"healthy run's 4 groups after {took:.1f}s")
    assert queued_groups(fresh_redis, stuck_run) == [] and not error_messages(fresh_redis, stuck_run)
    assert pending_prompts(fresh_redis, stuck_run) == 0
    assert WorkQueue(fresh_redis).queued_prompts(stuck_run) == 16 == accounted(fresh_redis, stuck_run)


def test_permanent_failures_end_the_prompt_with_an_error_and_are_not_retried(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    invalid = ScriptedRewardService(fn=aborting(grpc.StatusCode.INVALID_ARGUMENT))
    short = ScriptedRewardService(fn=lambda req, ctx: [1.0])
    with reward_server(invalid) as invalid_address, reward_server(short) as short_address:
        invalid_run = create_run(fresh_redis, tiny_model_dir, invalid_address, endpoint="invalid")
        short_run = create_run(fresh_redis, tiny_model_dir, short_address, endpoint="short")
        submit(fresh_redis, invalid_run, n=1, prefix="i")
        submit(fresh_redis, short_run, n=1, prefix="s")
        worker = make_worker(settings, fresh_redis)
        while process(worker):
            pass
    ((message_invalid,), (message_short,)) = (
        error_messages(fresh_redis, invalid_run),
        error_messages(fresh_redis, short_run),
    )
    assert message_invalid.startswith("prompt i0 skipped:") and "could not score" in message_invalid
    assert "scripted permanent failure" not in message_invalid  # the endpoint's words stay in the log
    assert message_short.startswith("prompt s0 skipped:") and "1 scores for 3 completions" in message_short
    assert len(invalid.requests) == len(short.requests) == 1
    queue = WorkQueue(fresh_redis)
    assert (
        queue.delayed_prompts() == []
        and queue.queued_prompts(invalid_run) == queue.queued_prompts(short_run) == 0
    )


@pytest.mark.slow
def test_a_ten_second_outage_loses_no_prompt(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    scripted = ScriptedRewardService()
    with reward_server(scripted) as address:
        run_id = create_run(fresh_redis, tiny_model_dir, address)
        port = int(address.rsplit(":", 1)[1])
        worker = make_worker(settings, fresh_redis, reward_retries=0, reward_retry_backoff_s=1.0)
        worker.rewards.breaker_cooldown_s = 2.0
        with running(worker):
            submit(fresh_redis, run_id, n=2, prefix="before")
            wait_for(lambda: len(queued_groups(fresh_redis, run_id)) == 2, 60)
    with running(worker):  # the endpoint is down for 10 s
        submit(fresh_redis, run_id, n=6, prefix="during")
        retries_seen = 0
        outage_end = time.monotonic() + 10
        while time.monotonic() < outage_end:
            delayed = WorkQueue(fresh_redis).delayed_prompts()
            retries_seen = max([retries_seen, *(t.reward_attempts for _, t in delayed)])
            time.sleep(0.2)
        assert queued_groups(fresh_redis, run_id)[2:] == [] and retries_seen >= 1
        with reward_server(scripted, port=port):
            took = wait_for(lambda: len(queued_groups(fresh_redis, run_id)) == 8, 60)
    worker.close()
    print(f"retries seen up to attempt {retries_seen}; all groups {took:.1f}s after the endpoint came back")
    assert not error_messages(fresh_redis, run_id)
    queue = WorkQueue(fresh_redis)
    assert queue.queued_prompts(run_id) == 0 and queue.delayed_prompts() == []
    assert sorted(g.prompt_id for g in queued_groups(fresh_redis, run_id)) == sorted(
        [f"before{i}" for i in range(2)] + [f"during{i}" for i in range(6)]
    )


def test_prompts_left_in_the_legacy_stream_become_groups(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    fresh_redis.xgroup_create(PROMPTS_STREAM, ROLLOUT_GROUP, id="0", mkstream=True)
    fresh_redis.xadd(PROMPTS_STREAM, {"data": to_json(PromptTask(run_id, "old0", "What is 1 + 1?"))})
    fresh_redis.incr(f"po:run:{run_id}:queued")  # as the older server counted it
    worker = make_worker(settings, fresh_redis)
    assert process(worker) == 1
    assert [g.prompt_id for g in queued_groups(fresh_redis, run_id)] == ["old0"]
    assert fresh_redis.xlen(PROMPTS_STREAM) == 0 and WorkQueue(fresh_redis).queued_prompts(run_id) == 0
