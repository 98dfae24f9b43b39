"""RewardClient against a real gRPC RewardService: scores, retries, deadlines and clear errors."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from support.rollout import ScriptedRewardService, dead_address, flaky, reward_server, slow

from policyopt.core.errors import RewardEndpointError
from policyopt.core.outbound import LOCAL_ALLOWLIST
from policyopt.core.settings import Settings
from policyopt.core.types import RewardEndpointInfo
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput

GROUP = ScoreInput(
    run_id="run-1",
    prompt_id="p-1",
    prompt="What is 2 + 3?",
    completions=["5", "five", "2 + 3 = 5"],
    metadata={"answer": "5", "tags": ["easy"]},
    adapter_version=7,
)


def make_client(retries: int = 2, timeout_s: float = 5.0) -> RewardClient:
    settings = Settings(
        reward_retries=retries, reward_timeout_s=timeout_s, endpoint_allowlist=LOCAL_ALLOWLIST
    )
    return RewardClient(settings, backoff_s=0.01)


def test_scores_come_back_in_order_and_the_request_carries_the_group() -> None:
    service = ScriptedRewardService()
    with reward_server(service) as address:
        scores = make_client().score(RewardEndpointInfo("ep", address), GROUP)
    assert scores == [1.0, 4.0, 9.0]
    request = service.requests[0]
    assert (request.run_id, request.prompt_id, request.adapter_version) == ("run-1", "p-1", 7)
    assert list(request.completions) == GROUP.completions
    assert service.metadata_of(0) == {"answer": "5", "tags": ["easy"]}


def test_nan_scores_raise_an_error_naming_the_problem() -> None:
    service = ScriptedRewardService(fn=lambda req, ctx: [1.0, math.nan, 0.0])
    with reward_server(service) as address, pytest.raises(RewardEndpointError, match="non-finite"):
        make_client().score(RewardEndpointInfo("ep", address), GROUP)
    assert len(service.requests) == 1  # not retried: the endpoint answered, wrongly


def test_infinite_scores_raise() -> None:
    service = ScriptedRewardService(fn=lambda req, ctx: [1.0, 2.0, math.inf])
    with reward_server(service) as address, pytest.raises(RewardEndpointError, match="non-finite"):
        make_client().score(RewardEndpointInfo("ep", address), GROUP)


def test_wrong_number_of_scores_raises() -> None:
    service = ScriptedRewardService(fn=lambda req, ctx: [1.0])
    with reward_server(service) as address, pytest.raises(RewardEndpointError, match="1 scores for 3"):
        make_client().score(RewardEndpointInfo("ep", address), GROUP)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED],
)
def test_transient_failures_are_retried(code: grpc.StatusCode) -> None:
    service = ScriptedRewardService(fn=flaky(2, code))
    with reward_server(service) as address:
        scores = make_client(retries=2).score(RewardEndpointInfo("ep", address), GROUP)
    assert scores == [1.0, 4.0, 9.0]
    assert len(service.requests) == 3


def test_permanent_failures_are_not_retried_and_their_details_stay_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def secret(_request: object, context: grpc.ServicerContext) -> list[float]:
        context.abort(grpc.StatusCode.INTERNAL, "SECRET-DETAIL")
        return []

    service = ScriptedRewardService(fn=secret)
    with (
        reward_server(service) as address,
        pytest.raises(RewardEndpointError, match="could not score") as info,
    ):
        make_client(retries=3).score(RewardEndpointInfo("ep", address), GROUP)
    assert len(service.requests) == 1
    assert "SECRET" not in str(info.value) and "INTERNAL" not in str(info.value)
    assert "SECRET-DETAIL" in caplog.text  # the operator still sees it


def test_dead_endpoint_fails_after_retries_with_the_address() -> None:
    address = dead_address()
    with pytest.raises(RewardEndpointError, match="could not score") as info:
        make_client(retries=2, timeout_s=1.0).score(RewardEndpointInfo("ep", address), GROUP)
    assert address in str(info.value)
    assert "unreachable" in str(info.value) and info.value.transient


def test_a_slow_endpoint_runs_into_its_deadline() -> None:
    service = ScriptedRewardService(fn=slow(1.0))
    endpoint = RewardEndpointInfo("ep", "", timeout_s=0.2)
    with reward_server(service) as address, pytest.raises(RewardEndpointError, match="deadline"):
        make_client(retries=1).score(RewardEndpointInfo("ep", address, endpoint.timeout_s), GROUP)


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.UNIMPLEMENTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.INTERNAL, False),
    ],
)
def test_failures_are_marked_transient_or_permanent(code: grpc.StatusCode, transient: bool) -> None:
    service = ScriptedRewardService(fn=flaky(100, code))
    with reward_server(service) as address, pytest.raises(RewardEndpointError) as info:
        make_client(retries=0).score(RewardEndpointInfo("ep", address), GROUP)
    assert info.value.transient is transient and not info.value.circuit_open


def test_wrong_answers_are_permanent() -> None:
    service = ScriptedRewardService(fn=lambda req, ctx: [1.0])
    with reward_server(service) as address, pytest.raises(RewardEndpointError) as info:
        make_client().score(RewardEndpointInfo("ep", address), GROUP)
    assert not info.value.transient


def test_the_circuit_opens_after_failures_in_a_row_and_calls_then_fail_fast() -> None:
    service = ScriptedRewardService(fn=flaky(3, grpc.StatusCode.UNAVAILABLE))
    settings = Settings(reward_retries=0, reward_timeout_s=5.0, endpoint_allowlist=LOCAL_ALLOWLIST)
    client = RewardClient(settings, breaker_threshold=3, breaker_cooldown_s=0.3)
    with reward_server(service) as address:
        endpoint = RewardEndpointInfo("ep", address)
        for _ in range(3):
            with pytest.raises(RewardEndpointError):
                client.score(endpoint, GROUP)
        with pytest.raises(RewardEndpointError, match="3 times in a row") as info:
            client.score(endpoint, GROUP)
        assert info.value.circuit_open and info.value.transient and 0 < info.value.retry_after_s <= 0.3
        assert len(service.requests) == 3  # the fourth call never left
        time.sleep(0.35)
        assert client.score(endpoint, GROUP) == [1.0, 4.0, 9.0]  # the trial call succeeds: closed again
        assert client.breaker(endpoint).state == "closed"
