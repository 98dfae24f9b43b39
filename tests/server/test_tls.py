"""The server over TLS and mutual TLS: Client and AsyncClient with a CA connect, the rest fail clearly.

Certificates come from ``support.tls``; the servers share the session's Valkey (database 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from support.tls import TlsFiles, make_tls

from policyopt.client import AsyncClient, Client, InvalidArgument, Unavailable, tls_credentials
from policyopt.core.settings import Settings
from policyopt.server.app import build_server
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

KEY = "key-tls"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """An unrelated CA: it did not sign the server's certificate."""
    return make_tls(tmp_path_factory.mktemp("other-tls"))


def tls_settings(valkey_url: str, data_dir: Path, tls: TlsFiles, *, mutual: bool = False) -> Settings:
    return Settings(
        redis_url=valkey_url,
        api_keys={KEY: "tls"},
        port=0,
        data_dir=str(data_dir),
        tls_cert=str(tls.server_cert),
        tls_key=str(tls.server_key),
        tls_client_ca=str(tls.ca) if mutual else "",
    )


@pytest.fixture(scope="module")
def tls_address(valkey_url: str, data_dir: Path, tls: TlsFiles) -> Iterator[str]:
    with build_server(tls_settings(valkey_url, data_dir, tls), max_workers=4) as running:
        yield running.address


@pytest.fixture(scope="module")
def mtls_address(valkey_url: str, data_dir: Path, tls: TlsFiles) -> Iterator[str]:
    with build_server(tls_settings(valkey_url, data_dir, tls, mutual=True), max_workers=4) as running:
        yield running.address


def test_a_client_with_the_ca_calls_a_tls_server(tls_address: str, tls: TlsFiles) -> None:
    with Client(tls_address, api_key=KEY, tls_ca=tls.ca) as client:
        assert client.tls
        assert isinstance(client.list_runs(), list)
        assert client.list_methods().presets


def test_the_ca_may_be_given_as_pem_text(tls_address: str, tls: TlsFiles) -> None:
    with Client(tls_address, api_key=KEY, tls_ca=tls.ca_pem) as client:
        assert isinstance(client.list_reward_endpoints(), list)


def test_an_async_client_with_the_ca_calls_a_tls_server(tls_address: str, tls: TlsFiles) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(tls_address, api_key=KEY, tls_ca=str(tls.ca)) as client:
            return [p.name for p in (await client.list_methods()).presets]

    assert "grpo" in asyncio.run(scenario())


def test_a_plaintext_client_of_a_tls_server_is_told_to_use_tls(tls_address: str) -> None:
    with Client(tls_address, api_key=KEY, timeout=10) as client, pytest.raises(Unavailable) as info:
        client.list_runs()
    message = str(info.value)
    assert info.value.status_code == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "plaintext" in message and "TLS" in message and "tls_ca" in message and "--tls-ca" in message


def test_a_plaintext_async_client_of_a_tls_server_is_told_to_use_tls(tls_address: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(tls_address, api_key=KEY, timeout=10) as client:
            await client.list_runs()

    with pytest.raises(Unavailable, match="serves TLS, connect with tls_ca="):
        asyncio.run(scenario())


def test_a_client_trusting_another_ca_is_refused(tls_address: str, other_ca: TlsFiles) -> None:
    client = Client(tls_address, api_key=KEY, tls_ca=other_ca.ca, timeout=10)
    with client, pytest.raises(Unavailable, match="certificate that tls_ca signed") as info:
        client.list_runs()
    assert "handshake" in str(info.value).lower()


def test_a_tls_client_of_a_plaintext_server_fails_clearly(server, tls: TlsFiles) -> None:
    client = Client(server.address, api_key=server.keys["a"], tls_ca=tls.ca, timeout=10)
    with client, pytest.raises(Unavailable, match="serving TLS"):
        client.list_runs()


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_address: str, tls: TlsFiles) -> None:
    client = Client(mtls_address, api_key=KEY, tls_ca=tls.ca, timeout=10)
    with client, pytest.raises(Unavailable, match="tls_cert= and tls_key="):
        client.list_runs()


def test_mutual_tls_accepts_a_client_certificate_the_ca_signed(mtls_address: str, tls: TlsFiles) -> None:
    with Client(
        mtls_address, api_key=KEY, tls_ca=tls.ca, tls_cert=tls.client_cert, tls_key=tls.client_key
    ) as client:
        assert client.list_methods().presets


def test_mutual_tls_refuses_a_certificate_another_ca_signed(
    mtls_address: str, tls: TlsFiles, other_ca: TlsFiles
) -> None:
    credentials = tls_credentials(ca=tls.ca, cert=other_ca.client_cert, key=other_ca.client_key)
    client = Client(mtls_address, api_key=KEY, credentials=credentials, timeout=10)
    with client, pytest.raises(Unavailable):
        client.list_runs()


def test_an_async_client_with_a_certificate_passes_mutual_tls(mtls_address: str, tls: TlsFiles) -> None:
    async def scenario() -> bool:
        async with AsyncClient(
            mtls_address, api_key=KEY, tls_ca=tls.ca, tls_cert=tls.client_cert, tls_key=tls.client_key
        ) as client:
            return bool((await client.list_methods()).presets)

    assert asyncio.run(scenario())


def test_the_api_key_is_still_required_over_tls(tls_address: str, tls: TlsFiles) -> None:
    from policyopt.client import Unauthenticated

    with Client(tls_address, api_key="wrong", tls_ca=tls.ca) as client, pytest.raises(Unauthenticated):
        client.list_runs()


def test_a_cert_without_its_key_is_refused_before_anything_starts(
    valkey_url: str, data_dir: Path, tls: TlsFiles
) -> None:
    settings = replace(tls_settings(valkey_url, data_dir, tls), tls_key="")
    with pytest.raises(InvalidArgument, match="POLICYOPT_TLS_CERT and POLICYOPT_TLS_KEY"):
        build_server(settings)


def test_a_client_ca_without_a_server_certificate_is_refused(valkey_url: str, data_dir: Path) -> None:
    settings = Settings(redis_url=valkey_url, port=0, data_dir=str(data_dir), tls_client_ca="/x/ca.pem")
    with pytest.raises(InvalidArgument, match="POLICYOPT_TLS_CLIENT_CA needs"):
        build_server(settings)


def test_a_missing_certificate_file_is_named(valkey_url: str, data_dir: Path, tls: TlsFiles) -> None:
    settings = replace(tls_settings(valkey_url, data_dir, tls), tls_cert=str(data_dir / "missing.pem"))
    with pytest.raises(InvalidArgument, match="server certificate .*missing.pem"):
        build_server(settings)


# -- reward endpoints registered for TLS ----------------------------------------------------------
def test_an_endpoint_registered_with_a_ca_path_keeps_tls_and_the_pem(client_a: Client, tls: TlsFiles) -> None:
    endpoint = client_a.register_reward_endpoint("tls-scorer", "127.0.0.1:50999", tls_ca=tls.ca)
    assert endpoint.tls and endpoint.tls_ca == tls.ca_pem
    assert "BEGIN" not in repr(endpoint)  # the PEM stays out of reprs
    listed = {e.name: e for e in client_a.list_reward_endpoints()}["tls-scorer"]
    assert listed.tls and listed.tls_ca == tls.ca_pem


def test_an_endpoint_may_use_tls_with_the_system_roots(client_a: Client) -> None:
    endpoint = client_a.register_reward_endpoint("tls-public", "localhost:443", tls=True)
    assert endpoint.tls and endpoint.tls_ca == ""


def test_a_plaintext_endpoint_stays_plaintext(client_a: Client) -> None:
    endpoint = client_a.register_reward_endpoint("plain-scorer", "127.0.0.1:50998")
    assert not endpoint.tls and endpoint.tls_ca == ""


def test_an_endpoint_ca_that_is_not_pem_is_invalid(client_a: Client) -> None:
    with pytest.raises(InvalidArgument, match="PEM"):
        client_a.register_reward_endpoint("bad-ca", "127.0.0.1:50997", tls_ca=b"not a certificate")


def test_an_endpoint_ca_without_tls_is_invalid(server, tls: TlsFiles) -> None:
    request = pb.RegisterRewardEndpointRequest(
        name="ca-no-tls", address="127.0.0.1:50996", tls=False, tls_ca=tls.ca_pem
    )
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.PolicyOptimizerStub(channel).RegisterRewardEndpoint(
            request, metadata=(("x-api-key", server.keys["a"]),), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set tls=true" in info.value.details()
