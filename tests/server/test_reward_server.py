"""RewardServer hosts per-item, batch and async reward functions behind a real gRPC channel."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from google.protobuf import struct_pb2

from policyopt.client import RewardServer
from policyopt.v1 import reward_pb2 as rpb
from policyopt.v1 import reward_pb2_grpc as rpb_grpc


def score_group(address: str, completions: list[str], metadata: dict) -> list[float]:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    request = rpb.ScoreRequest(
        run_id="r", prompt_id="p", prompt="What is 2 + 3?", completions=completions, metadata=struct
    )
    with grpc.insecure_channel(address) as channel:
        return list(rpb_grpc.RewardServiceStub(channel).Score(request, timeout=10).scores)


def exact(prompt: str, completion: str, metadata: dict) -> float:
    return 1.0 if completion.strip() == str(metadata["answer"]) else 0.0


async def exact_async(prompt: str, completion: str, metadata: dict) -> float:
    await asyncio.sleep(0.01)
    return exact(prompt, completion, metadata)


def batch_rank(prompt: str, completions: list[str], metadata: dict) -> list[float]:
    return [float(len(c)) for c in completions]


async def batch_rank_async(prompt: str, completions: list[str], metadata: dict) -> list[float]:
    await asyncio.sleep(0.01)
    return batch_rank(prompt, completions, metadata)


@pytest.mark.parametrize("fn", [exact, exact_async], ids=["sync", "async"])
def test_a_per_item_function_scores_each_completion(fn) -> None:
    with RewardServer(fn) as endpoint:
        assert endpoint.address.startswith("127.0.0.1:") and endpoint.port > 0
        assert score_group(endpoint.address, ["5", " 5 ", "6"], {"answer": 5}) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("fn", [batch_rank, batch_rank_async], ids=["sync", "async"])
def test_a_batch_function_scores_the_whole_group(fn) -> None:
    with RewardServer(fn, batch=True) as endpoint:
        assert score_group(endpoint.address, ["a", "abc", "ab"], {}) == [1.0, 3.0, 2.0]


def test_nan_is_passed_through_for_the_worker_to_reject() -> None:
    with RewardServer(lambda p, c, m: float("nan")) as endpoint:
        assert all(math.isnan(s) for s in score_group(endpoint.address, ["x", "y"], {}))


def test_a_failing_function_is_reported_with_its_error() -> None:
    def broken(prompt: str, completion: str, metadata: dict) -> float:
        raise KeyError("answer")

    with RewardServer(broken) as endpoint, pytest.raises(grpc.RpcError) as info:
        score_group(endpoint.address, ["x"], {})
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in info.value.details()


def test_a_batch_function_returning_the_wrong_count_is_reported() -> None:
    with RewardServer(lambda p, cs, m: [1.0], batch=True) as endpoint, pytest.raises(grpc.RpcError) as info:
        score_group(endpoint.address, ["x", "y"], {})
    assert "1 scores for 2 completions" in info.value.details()
