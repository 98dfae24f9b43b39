"""Prometheus metrics: the per-run helpers, a worker's /metrics endpoint, the RPC interceptor on a real
server, and the scrape-time queue gauges read from a real Valkey."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry

from policyopt.client import Client
from policyopt.client.errors import NotFound, Unauthenticated
from policyopt.core import metrics
from policyopt.core.settings import Settings
from policyopt.core.types import PromptTask, RunConfig
from policyopt.state.queue import (
    DELAYED_PROMPTS_KEY,
    ROLLOUT_GROUP,
    TRAINER_GROUP,
    WorkQueue,
    groups_stream,
    prompts_stream,
    queued_prompts_key,
)
from policyopt.state.runs import RunStore


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_rollout_counts_tokens_seconds_and_the_last_batch_rate() -> None:
    metrics.record_rollout("run-metrics-a", 120, 2.0, 3)
    metrics.record_rollout("run-metrics-a", 30, 1.0, 1)
    assert sample("policyopt_rollout_tokens_total", run_id="run-metrics-a") == 150
    assert sample("policyopt_rollout_seconds_total", run_id="run-metrics-a") == 3.0
    assert sample("policyopt_rollout_groups_total", run_id="run-metrics-a") == 4
    assert sample("policyopt_rollout_tokens_per_second", run_id="run-metrics-a") == 30.0
    metrics.forget_run("run-metrics-a")


def test_record_train_step_counts_optimizer_steps_and_versions_and_keeps_the_last_step() -> None:
    metrics.record_train_step(
        "run-metrics-b",
        {"trajectory/optimizer_steps": 2.0, "reward/mean": 0.25, "trainer/step_seconds": 1.5},
    )
    metrics.record_train_step("run-metrics-b", {"trajectory/optimizer_steps": 2.0, "reward/mean": 0.75})
    assert sample("policyopt_trainer_optimizer_steps_total", run_id="run-metrics-b") == 4
    assert sample("policyopt_adapter_versions_published_total", run_id="run-metrics-b") == 2
    assert sample("policyopt_trainer_reward_mean", run_id="run-metrics-b") == 0.75
    assert sample("policyopt_trainer_last_step_duration_seconds", run_id="run-metrics-b") == 1.5
    metrics.forget_run("run-metrics-b")


def test_forget_inactive_runs_drops_the_series_of_ended_runs_only() -> None:
    metrics.record_rollout("run-metrics-live", 10, 1.0, 1)
    metrics.record_train_step("run-metrics-ended", {})
    metrics.record_rollout("run-metrics-ended", 10, 1.0, 1)
    gone = metrics.forget_inactive_runs(["run-metrics-live"])
    assert "run-metrics-ended" in gone and "run-metrics-live" not in gone
    assert (
        REGISTRY.get_sample_value("policyopt_rollout_tokens_total", {"run_id": "run-metrics-ended"}) is None
    )
    assert (
        REGISTRY.get_sample_value(
            "policyopt_adapter_versions_published_total", {"run_id": "run-metrics-ended"}
        )
        is None
    )
    assert sample("policyopt_rollout_tokens_total", run_id="run-metrics-live") == 10
    metrics.forget_run("run-metrics-live")
    metrics.forget_run("run-metrics-never-seen")  # forgetting a run without series is fine


def test_redis_errors_are_counted_by_role_and_operation() -> None:
    metrics.set_role("rollout")
    before = sample("policyopt_redis_errors_total", role="rollout", operation="test_op")
    metrics.redis_error("test_op")
    assert sample("policyopt_redis_errors_total", role="rollout", operation="test_op") == before + 1


def test_serve_metrics_serves_the_registry_over_http_on_a_free_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = metrics.serve_metrics(Settings(http_port=0), "trainer")
    assert endpoint is not None
    try:
        assert endpoint.port > 0
        assert f"policyopt trainer metrics on {endpoint.url}" in capsys.readouterr().out
        metrics.record_train_step("run-metrics-http", {})
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            body = response.read().decode()
        assert 'policyopt_adapter_versions_published_total{run_id="run-metrics-http"} 1.0' in body
    finally:
        endpoint.close()
        metrics.forget_run("run-metrics-http")


def test_serve_metrics_on_a_taken_port_says_how_to_choose_another() -> None:
    first = metrics.serve_metrics(Settings(http_port=0), "rollout")
    assert first is not None
    try:
        with pytest.raises(OSError, match="set POLICYOPT_HTTP_PORT"):
            metrics.serve_metrics(Settings(http_port=first.port), "trainer")
    finally:
        first.close()


def test_serve_metrics_is_off_for_a_negative_port() -> None:
    assert metrics.serve_metrics(Settings(http_port=-1), "rollout") is None


def test_url_host_turns_wildcards_into_loopback() -> None:
    assert metrics.url_host("0.0.0.0") == "127.0.0.1"
    assert metrics.url_host("::") == "[::1]"
    assert metrics.url_host("::1") == "[::1]"
    assert metrics.url_host("10.0.0.5") == "10.0.0.5"


# -- scrape-time queue gauges ------------------------------------------------------------------------
def test_collector_key_names_follow_the_work_queue() -> None:
    assert prompts_stream("R") == "po:run:R:prompts" and groups_stream("R") == "po:run:R:groups"
    assert queued_prompts_key("R") == "po:run:R:queued" and metrics.DELAYED_PROMPTS_KEY == DELAYED_PROMPTS_KEY
    assert (ROLLOUT_GROUP, TRAINER_GROUP) == ("rollout", "trainer")


@pytest.fixture
def scraped(fresh_redis: redis.Redis) -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(fresh_redis))
    yield registry


def test_collector_reports_a_running_runs_queued_and_pending_prompts(
    fresh_redis: redis.Redis, scraped: CollectorRegistry
) -> None:
    run = RunStore(fresh_redis).create_run("team", RunConfig(base_model="tiny"))
    queue = WorkQueue(fresh_redis)
    queue.enqueue_prompts([PromptTask(run.run_id, f"p{i}", f"prompt {i}") for i in range(3)])
    queue.claim_prompts("rollout-test", count=1, block_ms=0)
    labels = {"run_id": run.run_id, "tenant": "team"}
    assert scraped.get_sample_value("policyopt_prompts_queued", labels) == 3
    assert scraped.get_sample_value("policyopt_prompts_pending", labels) == 1
    assert scraped.get_sample_value("policyopt_groups_queued", labels) == 0
    assert scraped.get_sample_value("policyopt_groups_pending", labels) == 0
    assert scraped.get_sample_value("policyopt_runs_active") == 1
    assert scraped.get_sample_value("policyopt_prompts_delayed") == 0


def test_collector_leaves_out_runs_that_are_not_running(
    fresh_redis: redis.Redis, scraped: CollectorRegistry
) -> None:
    from policyopt.core.types import RunStatus

    store = RunStore(fresh_redis)
    run = store.create_run("team", RunConfig(base_model="tiny"))
    store.set_status(run.run_id, RunStatus.CANCELLED)
    assert (
        scraped.get_sample_value("policyopt_prompts_queued", {"run_id": run.run_id, "tenant": "team"}) is None
    )
    assert scraped.get_sample_value("policyopt_runs_active") == 0


def test_collector_counts_a_redis_error_and_reports_nothing_when_redis_is_down() -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(down))
    metrics.set_role("server")
    before = sample("policyopt_redis_errors_total", role="server", operation="scrape_queues")
    assert registry.get_sample_value("policyopt_runs_active") is None
    assert sample("policyopt_redis_errors_total", role="server", operation="scrape_queues") == before + 1


def test_register_server_collector_reports_on_the_default_registry_and_replaces_itself(
    fresh_redis: redis.Redis,
) -> None:
    run = RunStore(fresh_redis).create_run("team", RunConfig(base_model="tiny"))
    WorkQueue(fresh_redis).enqueue_prompts([PromptTask(run.run_id, "p0", "prompt")])
    try:
        metrics.register_server_collector(fresh_redis)
        metrics.register_server_collector(fresh_redis)  # a second server in the process: no duplicate
        assert sample("policyopt_prompts_queued", run_id=run.run_id, tenant="team") == 1
    finally:
        metrics.unregister_server_collector()
    assert (
        REGISTRY.get_sample_value("policyopt_prompts_queued", {"run_id": run.run_id, "tenant": "team"})
        is None
    )


# -- RPCs on a real server ---------------------------------------------------------------------------
@pytest.fixture
def served(fresh_redis_url: str) -> Iterator[str]:
    from policyopt.server.app import build_server

    settings = Settings(redis_url=fresh_redis_url, port=0, api_keys={"k": "team"}, http_port=-1)
    with build_server(settings, max_workers=8) as running:
        yield running.address


def test_the_interceptor_counts_each_call_by_method_and_status_code(served: str) -> None:
    method = "PolicyOptimizer/ListRuns"
    ok_before = sample("policyopt_rpc_requests_total", method=method, code="OK")
    unauth_before = sample("policyopt_rpc_requests_total", method=method, code="UNAUTHENTICATED")
    missing_before = sample("policyopt_rpc_requests_total", method="PolicyOptimizer/GetRun", code="NOT_FOUND")
    timed_before = sample("policyopt_rpc_duration_seconds_count", method=method)
    with Client(served, api_key="k") as client:
        client.list_runs()
        client.list_runs()
        with pytest.raises(NotFound):
            client.get_run("run-000000000000")
    with Client(served, api_key="wrong") as client, pytest.raises(Unauthenticated):
        client.list_runs()
    assert sample("policyopt_rpc_requests_total", method=method, code="OK") == ok_before + 2
    assert sample("policyopt_rpc_requests_total", method=method, code="UNAUTHENTICATED") == unauth_before + 1
    assert (
        sample("policyopt_rpc_requests_total", method="PolicyOptimizer/GetRun", code="NOT_FOUND")
        == missing_before + 1
    )
    assert sample("policyopt_rpc_duration_seconds_count", method=method) == timed_before + 3


def test_the_interceptor_counts_a_stream_with_its_code_when_it_ends(served: str) -> None:
    method = "PolicyOptimizer/WatchRun"
    before = sample("policyopt_rpc_requests_total", method=method, code="NOT_FOUND")
    with Client(served, api_key="k") as client, pytest.raises(NotFound):
        list(client.watch_run("run-000000000000"))
    assert sample("policyopt_rpc_requests_total", method=method, code="NOT_FOUND") == before + 1
