"""SSRF through the service: with the `serve` defaults, tenants' endpoints cannot point inside the service's
network. Real listeners (an HTTP server, a gRPC RewardService) on loopback show that nothing calls them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http import SecretHTTPServer, secret_http_server

from policyopt.client import Client, InvalidArgument, PermissionDenied, RewardServer
from policyopt.core.settings import Settings

KEY = "outbound-key"


@pytest.fixture
def http_listener() -> Iterator[SecretHTTPServer]:
    with secret_http_server(500, b'{"error": {"message": "SECRET-BODY internal token abc123"}}') as server:
        yield server


@pytest.fixture
def grpc_listener() -> Iterator[tuple[RewardServer, list[str]]]:
    calls: list[str] = []

    def score(prompt: str, completion: str, metadata: dict[str, object]) -> float:
        calls.append(prompt)
        return 1.0

    with RewardServer(score) as endpoint:
        yield endpoint, calls


@pytest.fixture(scope="module")
def serve_client(
    valkey_url: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Client]:
    """A server with the `policyopt serve` defaults: no endpoint allowlist."""
    from policyopt.server.app import build_server

    settings = Settings(
        redis_url=valkey_url,
        api_keys={KEY: "outbound"},
        port=0,
        data_dir=str(data_dir),
        model_roots=(str(tmp_path_factory.getbasetemp()),),
    )
    with (
        build_server(settings, max_workers=4, poll_ms=200) as running,
        Client(running.address, api_key=KEY, timeout=60) as client,
    ):
        yield client


def test_serve_refuses_reward_endpoints_on_loopback_link_local_and_port_0(
    serve_client: Client,
    http_listener: SecretHTTPServer,
    grpc_listener: tuple[RewardServer, list[str]],
) -> None:
    endpoint, calls = grpc_listener
    http_address = http_listener.url.removeprefix("http://")
    for address in (endpoint.address, http_address, "localhost:50051", "169.254.169.254:80", "127.0.0.1:0"):
        with pytest.raises(PermissionDenied, match="POLICYOPT_ENDPOINT_ALLOWLIST"):
            serve_client.register_reward_endpoint("inside", address)
    assert [e.name for e in serve_client.list_reward_endpoints()] == []
    assert calls == [] and http_listener.paths == []


def test_serve_refuses_a_teacher_endpoint_on_loopback_without_calling_it(
    serve_client: Client, http_listener: SecretHTTPServer, tiny_model_dir: Path
) -> None:
    with pytest.raises(PermissionDenied, match="teacher.endpoint .*POLICYOPT_ENDPOINT_ALLOWLIST"):
        serve_client.create_run(
            str(tiny_model_dir), method="opd", teacher_endpoint=http_listener.url, teacher_coef=1.0
        )
    assert http_listener.paths == []


def test_a_teacher_endpoint_with_a_query_cannot_choose_the_path(
    client_a: Client, http_listener: SecretHTTPServer, tiny_model_dir: Path
) -> None:
    """``http://host/admin/delete?q=`` would turn the service's ``/v1/completions`` into a query string."""
    for url in (f"{http_listener.url}/admin/delete?q=", f"{http_listener.url}/#", "http://u:p@127.0.0.1:1"):
        with pytest.raises(InvalidArgument, match="base URL"):
            client_a.create_run(str(tiny_model_dir), method="opd", teacher_endpoint=url, teacher_coef=1.0)
    assert http_listener.paths == []


def test_the_services_own_valkey_is_refused_even_with_loopback_allowed(
    client_a: Client, valkey_url: str
) -> None:
    address = valkey_url.split("//", 1)[1].split("/", 1)[0]
    with pytest.raises(PermissionDenied, match="POLICYOPT_ENDPOINT_ALLOWLIST"):
        client_a.register_reward_endpoint("own-valkey", address)


def test_models_outside_the_declared_names_and_roots_are_refused(client_a: Client) -> None:
    for name in ("~", "~/.cache/huggingface", "/etc", "relative/model"):
        with pytest.raises(PermissionDenied, match="POLICYOPT_MODELS"):
            client_a.create_run(name, method="grpo")
    with pytest.raises(PermissionDenied, match="POLICYOPT_MODELS"):
        client_a.create_run("tiny", method="opd", teacher_model="~/teacher", teacher_coef=1.0)
