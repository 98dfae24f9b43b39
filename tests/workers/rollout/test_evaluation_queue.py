"""Eval work is durable: a worker that dies mid-chunk leaves it to another, and a transient reward failure
is retried with backoff until ``reward_max_attempts`` (real Valkey, real worker processes, real endpoints)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from support.rollout import ScriptedRewardService, create_run, dead_address, error_messages, reward_server

from policyopt.client import RewardServer
from policyopt.core.settings import Settings
from policyopt.core.types import EvalConfig, EvalPrompt, EventKind, RunEvent, from_json
from policyopt.state.evals import DELAYED_EVALS, EVAL_GROUP, EVAL_TASKS, EvalStore, EvalTask
from policyopt.state.runs import RunStore
from policyopt.workers.rollout.worker import RolloutWorker

PROMPTS = [EvalPrompt("Count to three."), EvalPrompt("Name a color.")]

CHILD = """
import pickle, sys
from policyopt.workers.rollout.worker import RolloutWorker
with open(sys.argv[1], "rb") as fh:
    settings = pickle.load(fh)
RolloutWorker(settings, consumer="doomed").evaluator.run_chunk()
"""


def _eval_run(fresh_redis: redis.Redis, tiny_model_dir: Path, address: str) -> str:
    """A run evaluated at every version, with two eval prompts and version 0's evaluation queued."""
    run_id = create_run(fresh_redis, tiny_model_dir, address, max_new_tokens=4, eval=EvalConfig(every=1))
    evals = EvalStore(fresh_redis)
    evals.add_prompts(run_id, PROMPTS, limit=10)
    evals.enqueue(EvalTask(run_id, 0))
    return run_id


def _evals_of(fresh_redis: redis.Redis, run_id: str) -> list[RunEvent]:
    return [e for e in RunStore(fresh_redis).read_events(run_id) if e.kind == EventKind.EVAL]


def _run_chunks_until_evaluated(
    worker: RolloutWorker, run_id: str, timeout_s: float = 60.0
) -> list[RunEvent]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.evaluator.run_chunk():
            time.sleep(0.05)
        evaluated = _evals_of(worker.r, run_id)
        if evaluated:
            return evaluated
    raise AssertionError(f"run {run_id} was not evaluated within {timeout_s}s")


def test_an_eval_chunk_of_a_worker_killed_mid_chunk_is_finished_by_another_worker(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    release = threading.Event()

    def judge(request, _context) -> list[float]:
        release.wait()  # the first worker is killed while its reward call hangs here
        return [0.5] * len(request.completions)

    service = ScriptedRewardService(fn=judge)
    settings = settings.replace(claim_idle_ms=600)
    with reward_server(service) as address:
        run_id = _eval_run(fresh_redis, tiny_model_dir, address)
        settings_file = tmp_path / "settings.pickle"
        settings_file.write_bytes(pickle.dumps(settings))
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(settings_file)], env=dict(os.environ))
        try:
            deadline = time.monotonic() + 120
            while not service.requests and time.monotonic() < deadline:
                assert child.poll() is None, "the first worker exited before it scored"
                time.sleep(0.05)
            assert service.requests, "the first worker never reached its reward call"
            time.sleep(1.0)  # longer than claim_idle_ms: the live worker's touches keep the chunk its own
            assert EvalStore(fresh_redis).claim("thief", settings.claim_idle_ms) is None
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        [held] = fresh_redis.xpending_range(EVAL_TASKS, EVAL_GROUP, min="-", max="+", count=10)
        assert held["consumer"] == b"doomed"  # the dead worker's chunk is pending, not lost
        assert EvalStore(fresh_redis).pending(run_id)
        release.set()
        calls_before = len(service.requests)
        survivor = RolloutWorker(settings, redis_client=fresh_redis, consumer="survivor")
        try:
            [evaluated] = _run_chunks_until_evaluated(survivor, run_id)
        finally:
            survivor.close()
    assert evaluated.version == 0 and evaluated.metrics["eval/prompts"] == 2.0
    assert evaluated.metrics["eval/mean"] == pytest.approx(0.5)
    assert len(service.requests) - calls_before == 2  # the survivor sampled and scored the chunk again
    assert fresh_redis.xpending(EVAL_TASKS, EVAL_GROUP)["pending"] == 0
    assert not EvalStore(fresh_redis).pending(run_id) and not error_messages(fresh_redis, run_id)


def test_a_transient_eval_reward_failure_is_retried_until_the_endpoint_is_back(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    address = dead_address()  # the judge is down at first
    run_id = _eval_run(fresh_redis, tiny_model_dir, address)
    worker = RolloutWorker(settings.replace(reward_retry_backoff_s=0.3, reward_max_attempts=5),
                           redis_client=fresh_redis, consumer="w1", breaker_threshold=100)  # fmt: skip
    worker.rewards.backoff_s = 0.01
    try:
        assert worker.evaluator.run_chunk()
        [(member, due)] = fresh_redis.zrange(DELAYED_EVALS, 0, -1, withscores=True)
        retried = from_json(EvalTask, member.split(b" ", 1)[1])
        assert retried == EvalTask(run_id, 0, reward_attempts=1) and due > time.time()  # back with backoff
        assert EvalStore(fresh_redis).pending(run_id) and not error_messages(fresh_redis, run_id)
        host, port = address.rsplit(":", 1)
        with RewardServer(lambda prompt, completion, metadata: 1.0, host=host, port=int(port)):
            [evaluated] = _run_chunks_until_evaluated(worker, run_id)
    finally:
        worker.close()
    assert evaluated.metrics["eval/mean"] == 1.0 and evaluated.metrics["eval/prompts"] == 2.0
    assert not error_messages(fresh_redis, run_id) and not EvalStore(fresh_redis).pending(run_id)


def test_an_eval_whose_endpoint_stays_down_is_given_up_after_the_attempt_limit(
    settings: Settings, fresh_redis: redis.Redis, tiny_model_dir: Path
) -> None:
    run_id = _eval_run(fresh_redis, tiny_model_dir, dead_address())
    worker = RolloutWorker(settings.replace(reward_retry_backoff_s=0.1, reward_max_attempts=2),
                           redis_client=fresh_redis, consumer="w1", breaker_threshold=100)  # fmt: skip
    worker.rewards.backoff_s = 0.01
    try:
        assert worker.evaluator.run_chunk()
        assert not error_messages(fresh_redis, run_id)  # attempt 1 of 2: retried later
        deadline = time.monotonic() + 30
        while not error_messages(fresh_redis, run_id) and time.monotonic() < deadline:
            if not worker.evaluator.run_chunk():
                time.sleep(0.05)
    finally:
        worker.close()
    [message] = error_messages(fresh_redis, run_id)
    assert "evaluation of version 0 was given up after 2 attempts" in message
    assert "POLICYOPT_REWARD_MAX_ATTEMPTS is 2" in message
    assert not _evals_of(fresh_redis, run_id) and not EvalStore(fresh_redis).pending(run_id)
