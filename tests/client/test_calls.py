"""The typed calls agree with the service: each sends its RPC's request and reads its response."""

from __future__ import annotations

import typing

import pytest

from policyopt.client import InvalidArgument, _calls
from policyopt.client._stub import ClientStreamRpc, StreamRpc, Stub, UnaryRpc
from policyopt.v1 import policyopt_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyOptimizer"]

CALLS = [
    _calls.register_reward_endpoint("ones", "127.0.0.1:1", 5.0),
    _calls.list_reward_endpoints(),
    _calls.create_run(
        "model",
        {"method": "grpo", "reward_endpoint": "ones", "reward_side": {"name": "grpo"}, "group_size": 4},
    ),
    _calls.get_run("run-1"),
    _calls.list_runs(),
    _calls.cancel("run-1"),
    _calls.watch_run("run-1", "0-0"),
    _calls.submit_prompts("run-1", ["What is 1 + 1?"], [{"answer": 2}]),
    _calls.submit_trajectories("run-1", []),
    _calls.finish_episode("run-1", "session-1", 1.0, "task", {"correct": 1.0}),
    _calls.list_adapters("run-1"),
    _calls.watch_adapters("run-1", 1, 3.0),
    _calls.pull_adapter("run-1", "latest"),
    _calls.wait_for_version("run-1", 2).watch(),
    _calls.wait_for_version("run-1", 2).run_info(),
    _calls.list_methods(),
    _calls.add_eval_prompts("run-1", ["What is 2 + 2?"], [{"answer": 4}]),
]


class _MethodNames:
    """A stand-in stub whose methods are their own names."""

    def __getattr__(self, name: str) -> str:
        return name


def test_the_typed_stub_names_each_rpc_with_its_request_and_response() -> None:
    hints = typing.get_type_hints(Stub)
    assert sorted(hints) == sorted(m.name for m in SERVICE.methods)
    for method in SERVICE.methods:
        hint = hints[method.name]
        _, request, response = typing.get_args(hint)
        kind = (
            StreamRpc if method.server_streaming else ClientStreamRpc if method.client_streaming else UnaryRpc
        )
        assert typing.get_origin(hint) is kind, method.name
        assert request.DESCRIPTOR.full_name == method.input_type.full_name, method.name
        assert response.DESCRIPTOR.full_name == method.output_type.full_name, method.name


@pytest.mark.parametrize("call", CALLS, ids=lambda call: type(call.request).__name__)
def test_each_call_sends_its_request_to_the_rpc_that_takes_it_and_reads_its_response(
    call: _calls.Unary | _calls.Stream,
) -> None:
    method = SERVICE.methods_by_name[call.method(_MethodNames())]
    assert type(call.request).DESCRIPTOR.full_name == method.input_type.full_name
    assert isinstance(call, _calls.Stream) == method.server_streaming
    call.convert(getattr(pb, method.output_type.name)())  # reads only fields the response has


def test_the_watch_of_wait_for_version_starts_just_below_the_version() -> None:
    wait = _calls.wait_for_version("run-1", 5, timeout=2.0)
    watch = wait.watch()
    assert (watch.request.after_version, watch.timeout) == (4, 2.0)


def test_request_builders_turn_values_json_cannot_hold_into_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="metadata must be JSON-like"):
        _calls.submit_prompts("run-1", ["p"], [{"bad": {1, 2}}])
    with pytest.raises(InvalidArgument, match="metadata must be JSON-like"):
        _calls.create_run("model", {"reward_side": {"bad": object()}})


def test_create_run_puts_options_on_their_fields_and_rejects_unknown_ones() -> None:
    request = _calls.create_run(
        "model",
        {
            "method": "dapo",
            "reward_endpoint": "ones",
            "trajectory_side": {"clip": 0.2},
            "group_size": 4,
            "lora_rank": 8,
        },
    ).request
    assert (request.group_size, request.lora.rank, request.method.preset) == (4, 8, "dapo")
    assert request.reward_endpoint == "ones"
    assert _calls.create_run("model", {}).request.method.preset == "grpo"  # the default method
    assert request.method.trajectory_side["clip"] == pytest.approx(0.2)
    with pytest.raises(TypeError, match="unknown options"):
        _calls.create_run("model", {"group_sise": 4})
