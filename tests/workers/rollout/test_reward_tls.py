"""The rollout worker's reward client calls endpoints registered with ``tls`` over TLS, verified with their CA.

The endpoint is the SDK's ``RewardServer`` serving TLS with certificates from ``support.tls``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.tls import TlsFiles, make_tls

from policyopt.client import RewardServer
from policyopt.core.errors import RewardEndpointError
from policyopt.core.outbound import LOCAL_ALLOWLIST
from policyopt.core.settings import Settings
from policyopt.core.types import RewardEndpointInfo
from policyopt.v1 import reward_pb2, reward_pb2_grpc
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput, _open_channel

GROUP = ScoreInput(run_id="run-1", prompt_id="p-1", prompt="2 + 3?", completions=["5", "55"], metadata={})


def length(prompt: str, completion: str, metadata: dict) -> float:
    return float(len(completion))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_endpoint(tls: TlsFiles) -> Iterator[RewardServer]:
    with RewardServer(length, tls_cert=tls.server_cert, tls_key=tls.server_key) as endpoint:
        yield endpoint


def make_client() -> RewardClient:
    settings = Settings(reward_retries=1, reward_timeout_s=5.0, endpoint_allowlist=LOCAL_ALLOWLIST)
    return RewardClient(settings, backoff_s=0.01)


def test_a_tls_endpoint_is_scored_over_tls_with_its_ca(tls_endpoint: RewardServer, tls: TlsFiles) -> None:
    endpoint = RewardEndpointInfo("ep", tls_endpoint.address, tls=True, tls_ca=tls.ca_pem)
    assert make_client().score(endpoint, GROUP) == [1.0, 2.0]


def test_a_tls_endpoint_signed_by_another_ca_is_refused(
    tls_endpoint: RewardServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = make_tls(tmp_path_factory.mktemp("other"))
    endpoint = RewardEndpointInfo("ep", tls_endpoint.address, tls=True, tls_ca=other.ca_pem)
    # The handshake error stays in the worker's log: the tenant sees the service's own coarse reason.
    with pytest.raises(RewardEndpointError, match="serving TLS with a certificate") as info:
        make_client().score(endpoint, GROUP)
    assert info.value.transient


def test_a_plaintext_registration_of_a_tls_endpoint_fails(tls_endpoint: RewardServer) -> None:
    with pytest.raises(RewardEndpointError, match="could not score the group"):
        make_client().score(RewardEndpointInfo("ep", tls_endpoint.address), GROUP)


def test_a_tls_registration_of_a_plaintext_endpoint_fails(tls: TlsFiles) -> None:
    with RewardServer(length) as plain, pytest.raises(RewardEndpointError, match="serving TLS"):
        make_client().score(RewardEndpointInfo("ep", plain.address, tls=True, tls_ca=tls.ca_pem), GROUP)


def test_a_new_ca_for_the_same_address_gets_a_new_channel(
    tls_endpoint: RewardServer, tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = make_client()
    other = make_tls(tmp_path_factory.mktemp("stale"))
    with pytest.raises(RewardEndpointError):
        client.score(RewardEndpointInfo("ep", tls_endpoint.address, tls=True, tls_ca=other.ca_pem), GROUP)
    fixed = RewardEndpointInfo("ep", tls_endpoint.address, tls=True, tls_ca=tls.ca_pem)
    assert client.score(fixed, GROUP) == [1.0, 2.0]


def test_dialling_a_checked_address_still_verifies_the_registered_name(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The outbound policy may connect to the address a name resolved to; the certificate is the name's."""
    named = make_tls(tmp_path_factory.mktemp("named"), hosts=("rewards.test",))
    request = reward_pb2.ScoreRequest(completions=["abc"])
    with RewardServer(length, tls_cert=named.server_cert, tls_key=named.server_key) as server:
        endpoint = RewardEndpointInfo("ep", f"rewards.test:{server.port}", tls=True, tls_ca=named.ca_pem)
        with _open_channel(endpoint, target=server.address) as channel:
            reply = reward_pb2_grpc.RewardServiceStub(channel).Score(request, timeout=5)
        assert list(reply.scores) == [3.0]
        by_ip = RewardEndpointInfo("ep", server.address, tls=True, tls_ca=named.ca_pem)
        with pytest.raises(RewardEndpointError):  # the certificate names rewards.test, not 127.0.0.1
            make_client().score(by_ip, GROUP)
