"""Health checking reports SERVING per service and needs no key; reflection needs one unless opened."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from policyopt.core.errors import InvalidArgument
from policyopt.core.settings import load_settings


def test_health_is_serving_overall_and_for_the_service_without_a_key(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "policyopt.v1.PolicyOptimizer"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def _list_services(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)))
    return {s.name for s in response.list_services_response.service}


def test_reflection_lists_the_services_to_a_caller_with_a_key(server) -> None:
    names = _list_services(server.address, (("x-api-key", server.keys["a"]),))
    assert {"policyopt.v1.PolicyOptimizer", "grpc.health.v1.Health"} <= names


def test_reflection_without_a_key_is_unauthenticated(server) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _list_services(server.address)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_public_opens_reflection_and_nothing_else(server) -> None:
    from policyopt.server.app import build_server
    from policyopt.v1 import policyopt_pb2 as pb
    from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

    with build_server(server.settings.replace(reflection_public=True), max_workers=4) as public:
        assert "policyopt.v1.PolicyOptimizer" in _list_services(public.address)
        with grpc.insecure_channel(public.address) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.PolicyOptimizerStub(channel).ListRuns(pb.ListRunsRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_undecodable_reflection_requests_are_invalid_argument(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        replies = call(iter([b"\x0a\x02\xff\xfe"]), metadata=(("x-api-key", server.keys["a"]),), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            list(replies)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reflection_public_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLICYOPT_CONFIG", raising=False)
    assert load_settings().reflection_public is False
    for word, expected in (("true", True), ("1", True), ("off", False), ("No", False)):
        monkeypatch.setenv("POLICYOPT_REFLECTION_PUBLIC", word)
        assert load_settings().reflection_public is expected
    monkeypatch.setenv("POLICYOPT_REFLECTION_PUBLIC", "maybe")
    with pytest.raises(InvalidArgument, match="true or false"):
        load_settings()
