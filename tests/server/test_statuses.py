"""Each malformed request gets a precise status whose message says what to fix, never INTERNAL or UNKNOWN.

One test per finding of issue 10: ids with key suffixes, event ids, versions, long path components,
non-finite Struct numbers, undecodable bytes, and megabyte names echoed into messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf import struct_pb2
from support.wire import nested_create_run

from policyopt.client import RunHandle
from policyopt.server.errors import status_of
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

SERVICE = "/policyopt.v1.PolicyOptimizer/"
MEGABYTE_NAME = "n" * (1 << 20)


@pytest.fixture
def stub(server) -> Iterator[tuple[pb_grpc.PolicyOptimizerStub, grpc.Channel, tuple[tuple[str, str], ...]]]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PolicyOptimizerStub(channel), channel, (("x-api-key", server.keys["a"]),)


def status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a call that must fail; streams are drained."""
    with pytest.raises(grpc.RpcError) as info:
        reply = call()
        if hasattr(reply, "__next__"):  # a response stream: its status comes with the first read
            list(reply)  # type: ignore[call-overload]
    return info.value.code(), info.value.details() or ""


def run_calls(stub: pb_grpc.PolicyOptimizerStub, run_id: str, md) -> dict[str, Callable[[], object]]:
    """Every RPC that takes a run id, called with ``run_id``."""
    return {
        "GetRun": lambda: stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=md),
        "CancelRun": lambda: stub.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=md),
        "WatchRun": lambda: stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=md, timeout=10),
        "SubmitPrompts": lambda: stub.SubmitPrompts(
            pb.SubmitPromptsRequest(run_id=run_id, prompts=[pb.Prompt(text="hi")]), metadata=md
        ),
        "SubmitTrajectories": lambda: stub.SubmitTrajectories(
            pb.SubmitTrajectoriesRequest(run_id=run_id), metadata=md
        ),
        "ListAdapters": lambda: stub.ListAdapters(pb.ListAdaptersRequest(run_id=run_id), metadata=md),
        "PullAdapter": lambda: stub.PullAdapter(
            pb.PullAdapterRequest(run_id=run_id), metadata=md, timeout=10
        ),
        "WatchAdapters": lambda: stub.WatchAdapters(
            pb.WatchAdaptersRequest(run_id=run_id), metadata=md, timeout=10
        ),
    }


def test_a_run_id_with_a_key_suffix_is_not_found_exactly_like_an_unknown_run(
    stub, run_a: RunHandle, redis_client: redis.Redis
) -> None:
    channel_stub, _, md = stub
    redis_client.hset(f"po:run:{run_a.run_id}:adapters", "1", "{}")  # what a published version leaves
    for suffix in (":adapters", ":events", ":groups", ":trainer"):
        for name, call in run_calls(channel_stub, run_a.run_id + suffix, md).items():
            code, details = status(call)
            unknown_code, unknown_details = status(
                run_calls(channel_stub, "run-000000000000" + suffix, md)[name]
            )
            assert code == unknown_code == grpc.StatusCode.NOT_FOUND, (name, suffix, details)
            assert details.replace(run_a.run_id, "run-000000000000") == unknown_details


def test_a_bad_after_event_id_is_invalid_argument_not_unavailable(stub, run_a: RunHandle) -> None:
    channel_stub, _, md = stub
    for bad in ("zz", "1-x", "-1", "1-2-3", "99999999999999999999999-0", "١٢-0", "0-0\n", " 0"):
        code, details = status(
            lambda bad=bad: channel_stub.WatchRun(
                pb.WatchRunRequest(run_id=run_a.run_id, after_event_id=bad), metadata=md, timeout=10
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, details)
        assert "after_event_id" in details
    run_a.cancel()  # a stream of an ended run ends once everything has been sent
    events = list(
        channel_stub.WatchRun(pb.WatchRunRequest(run_id=run_a.run_id, after_event_id="0-0"), metadata=md)
    )
    assert [e.message for e in events][-1] == "cancelled"


def test_redis_refusing_a_command_is_invalid_argument_and_only_an_unreachable_redis_is_unavailable() -> None:
    refused = status_of(redis.ResponseError("Invalid stream ID specified as stream command argument"))
    assert refused[0] == grpc.StatusCode.INVALID_ARGUMENT and refused[2] == "InvalidArgument"
    assert (
        status_of(redis.DataError("Invalid input of type: 'NoneType'"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    )
    out_of_memory = status_of(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    assert out_of_memory[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    for down in (
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    ):
        assert status_of(down)[0] == grpc.StatusCode.UNAVAILABLE, down
    long_reply = status_of(redis.ResponseError("x" * 100_000))[1]
    assert len(long_reply) < 400


def test_a_version_that_is_not_an_ascii_non_negative_integer_is_invalid_argument(
    stub, run_a: RunHandle
) -> None:
    channel_stub, _, md = stub
    for bad in ("²", "٣", "1e3", "-1", "+1", " 1", "1\n", "9" * 19, "9" * 5000, "v1", "LATEST"):
        code, details = status(
            lambda bad=bad: channel_stub.PullAdapter(
                pb.PullAdapterRequest(run_id=run_a.run_id, version=bad), metadata=md, timeout=10
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, details)
        assert "non-negative integer" in details and len(details) < 300
    code, details = status(
        lambda: channel_stub.PullAdapter(pb.PullAdapterRequest(run_id=run_a.run_id, version="7"), metadata=md)
    )
    assert code == grpc.StatusCode.NOT_FOUND and "no adapter version 7" in details


def test_an_over_long_path_component_in_a_model_is_invalid_argument(
    stub, tiny_model_dir: Path, run_a: RunHandle
) -> None:
    channel_stub, _, md = stub
    for model in (str(tiny_model_dir / ("a" * 300)), str(tiny_model_dir / "a\x00b")):
        code, details = status(
            lambda model=model: channel_stub.CreateRun(pb.CreateRunRequest(base_model=model), metadata=md)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "cannot be read as a model directory" in details and len(details) < 400


def _struct(value: object) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"outer": {"scores": [1.0, value]}})
    return struct


def test_a_non_finite_number_in_a_struct_is_invalid_argument_naming_the_field(
    stub, run_a: RunHandle, tiny_model_dir: Path
) -> None:
    channel_stub, _, md = stub
    for bad in (float("nan"), float("inf"), float("-inf")):
        code, details = status(
            lambda bad=bad: channel_stub.SubmitPrompts(
                pb.SubmitPromptsRequest(
                    run_id=run_a.run_id,
                    prompts=[pb.Prompt(text="hi"), pb.Prompt(text="hi", metadata=_struct(bad))],
                ),
                metadata=md,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "prompts[1].metadata['outer']['scores'][1]" in details and "finite" in details
    method = pb.MethodSpec(preset="grpo", reward_side=_struct(float("nan")))
    code, details = status(
        lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(base_model=str(tiny_model_dir), method=method), metadata=md
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "method.reward_side['outer']" in details
    group = pb.TrajectoryGroupInput(metadata=_struct(float("inf")))
    code, details = status(
        lambda: channel_stub.SubmitTrajectories(
            pb.SubmitTrajectoriesRequest(run_id=run_a.run_id, groups=[group]), metadata=md
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "groups[0].metadata['outer']" in details


def test_undecodable_bytes_are_invalid_argument(stub) -> None:
    _, channel, md = stub
    get_run = channel.unary_unary(SERVICE + "GetRun", request_serializer=None, response_deserializer=None)
    create_run = channel.unary_unary(
        SERVICE + "CreateRun", request_serializer=None, response_deserializer=None
    )
    watch_run = channel.unary_stream(
        SERVICE + "WatchRun", request_serializer=None, response_deserializer=None
    )
    cases = {
        "invalid UTF-8": (get_run, b"\x0a\x02\xff\xfe"),
        "truncated": (get_run, b"\x0a\x10run-"),
        "garbage": (get_run, b"\xff\xff\xff\xff"),
        "too deep": (create_run, nested_create_run(200)),
        "invalid UTF-8 on a stream": (watch_run, b"\x0a\x01\xc3"),
    }
    for name, (call, data) in cases.items():
        code, details = status(lambda call=call, data=data: call(data, metadata=md, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert "is not a valid message" in details and "UTF-8" in details
    code, _ = status(lambda: get_run(b"\x0a\x02\xff\xfe", timeout=10))  # no key: auth answers first
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_megabyte_names_are_quoted_as_a_short_prefix(stub, run_a: RunHandle, tiny_model_dir: Path) -> None:
    channel_stub, _, md = stub
    model = str(tiny_model_dir)
    calls = {
        "endpoint name": lambda: channel_stub.RegisterRewardEndpoint(
            pb.RegisterRewardEndpointRequest(name=MEGABYTE_NAME, address="127.0.0.1:1"), metadata=md
        ),
        "endpoint address": lambda: channel_stub.RegisterRewardEndpoint(
            pb.RegisterRewardEndpointRequest(name="e", address=MEGABYTE_NAME), metadata=md
        ),
        "run id": lambda: channel_stub.GetRun(pb.GetRunRequest(run_id=MEGABYTE_NAME), metadata=md),
        "reward endpoint": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(base_model=model, reward_endpoint=MEGABYTE_NAME), metadata=md
        ),
        "preset": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(base_model=model, method=pb.MethodSpec(preset=MEGABYTE_NAME)), metadata=md
        ),
        "method key": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(
                base_model=model, method=pb.MethodSpec(preset="grpo", reward_side=_keyed(MEGABYTE_NAME))
            ),
            metadata=md,
        ),
        "choice name": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(
                base_model=model,
                method=pb.MethodSpec(preset="grpo", reward_side=_keyed("estimator", MEGABYTE_NAME)),
            ),
            metadata=md,
        ),
        "engine": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(base_model=model, engine=MEGABYTE_NAME), metadata=md
        ),
        "base model": lambda: channel_stub.CreateRun(
            pb.CreateRunRequest(base_model=MEGABYTE_NAME), metadata=md
        ),
        "version": lambda: channel_stub.PullAdapter(
            pb.PullAdapterRequest(run_id=run_a.run_id, version=MEGABYTE_NAME), metadata=md
        ),
        "event id": lambda: channel_stub.WatchRun(
            pb.WatchRunRequest(run_id=run_a.run_id, after_event_id=MEGABYTE_NAME), metadata=md
        ),
    }
    for name, call in calls.items():
        code, details = status(call)
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        ), (
            name,
            code,
            details[:300],
        )
        assert "nnnnnnnnnn" in details or name == "base model", (name, details[:300])
        assert MEGABYTE_NAME[:300] not in details, name


def _keyed(key: str, value: str = "x") -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({key: value})
    return struct
