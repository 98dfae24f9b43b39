"""The SDK's TLS helpers: PEM from paths or text, clear errors, and RewardServer serving (mutual) TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.tls import TlsFiles, make_tls

from policyopt.client import Client, InvalidArgument, RewardServer, tls_credentials
from policyopt.client.tls import read_pem
from policyopt.v1 import reward_pb2, reward_pb2_grpc

REQUEST = reward_pb2.ScoreRequest(completions=["ab", "abcd"])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def score(address: str, credentials: grpc.ChannelCredentials) -> list[float]:
    with grpc.secure_channel(address, credentials) as channel:
        return list(reward_pb2_grpc.RewardServiceStub(channel).Score(REQUEST, timeout=5).scores)


def length(prompt: str, completion: str, metadata: dict) -> float:
    return float(len(completion))


def test_pem_comes_from_a_path_a_str_path_pem_text_or_bytes(tls: TlsFiles) -> None:
    pem = tls.ca.read_bytes()
    assert read_pem(tls.ca, "CA") == read_pem(str(tls.ca), "CA") == pem
    assert read_pem(pem.decode(), "CA") == read_pem(pem, "CA") == pem


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read the TLS CA certificate '.*nope\.pem'"):
        read_pem(tmp_path / "nope.pem", "CA certificate")


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "der.crt").write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(InvalidArgument, match="is not PEM"):
        read_pem(tmp_path / "der.crt", "CA certificate")


def test_a_client_certificate_needs_its_key(tls: TlsFiles) -> None:
    with pytest.raises(InvalidArgument, match="both the client certificate and its key"):
        tls_credentials(ca=tls.ca, cert=tls.client_cert)


def test_credentials_and_tls_paths_are_exclusive(tls: TlsFiles) -> None:
    with pytest.raises(InvalidArgument, match="not both"):
        Client("127.0.0.1:1", credentials=tls_credentials(), tls_ca=tls.ca)


def test_a_reward_server_with_a_certificate_serves_tls(tls: TlsFiles) -> None:
    with RewardServer(length, tls_cert=tls.server_cert, tls_key=tls.server_key) as endpoint:
        assert score(endpoint.address, tls_credentials(ca=tls.ca)) == [2.0, 4.0]
        with grpc.insecure_channel(endpoint.address) as channel, pytest.raises(grpc.RpcError) as info:
            reward_pb2_grpc.RewardServiceStub(channel).Score(REQUEST, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_reward_server_with_a_client_ca_requires_a_client_certificate(tls: TlsFiles) -> None:
    with RewardServer(
        length, tls_cert=tls.server_cert.read_text(), tls_key=tls.server_key, tls_client_ca=tls.ca
    ) as endpoint:
        with pytest.raises(grpc.RpcError) as info:
            score(endpoint.address, tls_credentials(ca=tls.ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = tls_credentials(ca=tls.ca, cert=tls.client_cert, key=tls.client_key)
        assert score(endpoint.address, with_cert) == [2.0, 4.0]


def test_a_reward_server_certificate_needs_its_key(tls: TlsFiles) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        RewardServer(length, tls_cert=tls.server_cert)
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        RewardServer(length, tls_client_ca=tls.ca)
