"""The rollout worker's metrics with real parts: sampled tokens of a run on the tiny model, and reward call
latency, retries and errors per endpoint against a real RewardService."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
import redis
from prometheus_client import REGISTRY
from support.rollout import (
    ScriptedRewardService,
    create_run,
    flaky,
    make_worker,
    process,
    queued_groups,
    reward_server,
    submit,
)

from policyopt.core.errors import RewardEndpointError
from policyopt.core.outbound import LOCAL_ALLOWLIST
from policyopt.core.settings import Settings
from policyopt.core.types import RewardEndpointInfo, RunStatus
from policyopt.state.runs import RunStore
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput

GROUP = ScoreInput(run_id="run-1", prompt_id="p-1", prompt="What is 2 + 3?", completions=["5", "five"])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sampled_completion_tokens_and_seconds_are_counted_per_run(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _scripted, address = service
    calls_before = sample("policyopt_reward_call_duration_seconds_count", endpoint=address)
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    submit(fresh_redis, run_id, n=2)
    worker = make_worker(settings, fresh_redis)
    try:
        assert process(worker) == 2
    finally:
        worker.close()
    completion_tokens = sum(
        len(t.completion_ids) for g in queued_groups(fresh_redis, run_id) for t in g.trajectories
    )
    assert sample("policyopt_rollout_tokens_total", run_id=run_id) == completion_tokens > 0
    assert sample("policyopt_rollout_groups_total", run_id=run_id) == 2
    assert sample("policyopt_rollout_seconds_total", run_id=run_id) > 0
    assert sample("policyopt_rollout_tokens_per_second", run_id=run_id) > 0
    assert sample("policyopt_reward_call_duration_seconds_count", endpoint=address) == calls_before + 2


def test_a_prompt_of_an_ended_run_forgets_the_runs_series(
    settings: Settings,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    service: tuple[ScriptedRewardService, str],
) -> None:
    _scripted, address = service
    run_id = create_run(fresh_redis, tiny_model_dir, address)
    submit(fresh_redis, run_id, n=1)
    worker = make_worker(settings, fresh_redis)
    try:
        process(worker)
        assert sample("policyopt_rollout_tokens_total", run_id=run_id) > 0
        submit(fresh_redis, run_id, n=1, prefix="late")
        RunStore(fresh_redis).set_status(run_id, RunStatus.CANCELLED)
        process(worker)
    finally:
        worker.close()
    assert REGISTRY.get_sample_value("policyopt_rollout_tokens_total", {"run_id": run_id}) is None


def _client() -> RewardClient:
    settings = Settings(reward_retries=2, reward_timeout_s=5.0, endpoint_allowlist=LOCAL_ALLOWLIST)
    return RewardClient(settings, backoff_s=0.01)


def _reward_samples(address: str, code: str) -> tuple[float, float, float]:
    """(retries, call attempts timed, errors with ``code``) of the endpoint at ``address``."""
    return (
        sample("policyopt_reward_call_retries_total", endpoint=address),
        sample("policyopt_reward_call_duration_seconds_count", endpoint=address),
        sample("policyopt_reward_call_errors_total", endpoint=address, code=code),
    )


def test_reward_call_retries_and_latency_are_counted_per_endpoint() -> None:
    service = ScriptedRewardService(fn=flaky(2, grpc.StatusCode.UNAVAILABLE))
    with reward_server(service) as address:
        before = _reward_samples(address, "UNAVAILABLE")
        _client().score(RewardEndpointInfo("ep", address), GROUP)
    assert _reward_samples(address, "UNAVAILABLE") == (before[0] + 2, before[1] + 3, before[2])


def test_reward_call_errors_are_counted_with_their_status() -> None:
    service = ScriptedRewardService(fn=flaky(5, grpc.StatusCode.INVALID_ARGUMENT))
    with reward_server(service) as address:
        before = _reward_samples(address, "INVALID_ARGUMENT")
        with pytest.raises(RewardEndpointError):
            _client().score(RewardEndpointInfo("ep", address), GROUP)
    assert _reward_samples(address, "INVALID_ARGUMENT") == (before[0], before[1] + 1, before[2] + 1)


def test_unusable_scores_count_as_bad_scores() -> None:
    service = ScriptedRewardService(fn=lambda req, ctx: [1.0, math.nan])
    with reward_server(service) as address:
        before = _reward_samples(address, "BAD_SCORES")
        with pytest.raises(RewardEndpointError):
            _client().score(RewardEndpointInfo("ep", address), GROUP)
    assert _reward_samples(address, "BAD_SCORES") == (before[0], before[1] + 1, before[2] + 1)
