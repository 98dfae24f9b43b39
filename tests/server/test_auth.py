"""API keys: missing or wrong keys are UNAUTHENTICATED; runs are invisible to other tenants."""

from __future__ import annotations

import grpc
import pytest

from policyopt.client import Client, NotFound, RunHandle, Unauthenticated
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc


def test_a_call_without_an_api_key_is_unauthenticated(server) -> None:
    with Client(server.address, api_key="") as client, pytest.raises(Unauthenticated, match="x-api-key"):
        client.list_runs()


def test_a_wrong_api_key_is_unauthenticated(server) -> None:
    with (
        Client(server.address, api_key="not-a-key") as client,
        pytest.raises(Unauthenticated, match="not recognised"),
    ):
        client.list_runs()


def test_a_wrong_key_on_a_stream_is_unauthenticated(server) -> None:
    with Client(server.address, api_key="not-a-key") as client, pytest.raises(Unauthenticated):
        list(client.watch_run("run-anything"))


def test_the_status_code_is_unauthenticated_on_the_wire(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PolicyOptimizerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRuns(pb.ListRunsRequest(), metadata=(("x-api-key", "nope"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_bearer_token_is_accepted(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PolicyOptimizerStub(channel)
        stub.ListRuns(pb.ListRunsRequest(), metadata=(("authorization", f"Bearer {server.keys['a']}"),))


def test_another_tenant_gets_not_found_for_a_run(run_a: RunHandle, client_b: Client) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        client_b.get_run(run_a.run_id)
    with pytest.raises(NotFound):
        client_b.submit_prompts(run_a.run_id, ["What is 1 + 1?"])
    with pytest.raises(NotFound):
        client_b.list_adapters(run_a.run_id)
    with pytest.raises(NotFound):
        list(client_b.watch_run(run_a.run_id))
    assert run_a.run_id not in [r.run_id for r in client_b.list_runs()]


def test_reward_endpoints_are_per_tenant(client_a: Client, client_b: Client) -> None:
    client_a.register_reward_endpoint("only-a", "127.0.0.1:1")
    assert "only-a" in [e.name for e in client_a.list_reward_endpoints()]
    assert "only-a" not in [e.name for e in client_b.list_reward_endpoints()]


def test_without_configured_keys_every_caller_is_tenant_default_and_the_server_warns(server, caplog) -> None:
    from policyopt.server.app import build_server

    open_settings = server.settings.replace(api_keys={})
    with (
        caplog.at_level("WARNING"),
        build_server(open_settings, max_workers=4) as open_server,
        Client(open_server.address, api_key="") as client,
    ):
        client.register_reward_endpoint("open-endpoint", "127.0.0.1:1")
        assert "open-endpoint" in [e.name for e in client.list_reward_endpoints()]
    assert "auth is off" in caplog.text
