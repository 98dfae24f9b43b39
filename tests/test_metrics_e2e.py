"""End to end: every process of `start_stack` serves Prometheus metrics on its own free HTTP port, and
they move while a run trains on the tiny model."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, RewardServer
from policyopt.core.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

KEY = "metrics-e2e-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("metrics-e2e-data")
    settings = Settings(
        data_dir=str(data_dir),
        port=0,
        http_port=0,  # a free HTTP port for the server too: never the default 8080 in tests
        api_keys={KEY: "team"},
        torch_threads=1,
        model_roots=(str(tmp_path_factory.getbasetemp()),),
    )
    with start_stack(settings, log_dir=data_dir / "logs") as running:
        yield running


def scrape(base_url: str, timeout_s: float = 180.0) -> str:
    """``base_url/metrics`` as text, retried while the process is still starting (imports take a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name`` with (at least) ``labels`` in an exposition text; None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def scrape_until(base_url: str, name: str, at_least: float, timeout_s: float = 60.0, **labels: str) -> str:
    """Scrape until ``name{labels}`` reaches ``at_least`` (a step is committed before it is counted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(base_url)
        if (value(text, name, **labels) or 0) >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(0.25)


def test_every_process_serves_metrics_that_move_while_a_run_trains(
    stack: Stack, tiny_model_dir: Path
) -> None:
    assert set(stack.http_urls) == {"server", "rollout-0", "trainer"}
    rollout_url, trainer_url = stack.http_urls["rollout-0"], stack.http_urls["trainer"]
    assert len(set(stack.http_urls.values())) == 3, "each process has its own port"
    published = "policyopt_adapter_versions_published_total"

    with (
        RewardServer(lambda prompt, completion, metadata: float(len(completion) % 3)) as endpoint,
        Client(stack.address, api_key=KEY) as client,
    ):
        client.register_reward_endpoint("mod3", endpoint.address)
        run = client.create_run(
            base_model=str(tiny_model_dir), method="grpo", reward_endpoint="mod3",
            group_size=2, prompts_per_step=2, max_new_tokens=8, learning_rate=5e-3,
        )  # fmt: skip
        run_id = run.run_id
        assert value(scrape(rollout_url), "policyopt_rollout_tokens_total", run_id=run_id) is None
        # Two rounds of prompts, two steps each: the counters stand still between the rounds.
        run.submit_prompts([f"Count to {i}" for i in range(4)])
        run.wait_for_version(2, timeout=300)
        trainer_first = scrape_until(trainer_url, published, 2, run_id=run_id)
        rollout_first = scrape(rollout_url)
        server_text = _scrape_server(stack)
        run.submit_prompts([f"Count down from {i}" for i in range(4)])
        run.wait_for_version(4, timeout=300)
        trainer_second = scrape_until(trainer_url, published, 4, run_id=run_id)
        rollout_second = scrape(rollout_url)
        run.cancel()

    versions = [value(text, published, run_id=run_id) for text in (trainer_first, trainer_second)]
    steps = [
        value(text, "policyopt_trainer_optimizer_steps_total", run_id=run_id)
        for text in (trainer_first, trainer_second)
    ]
    assert versions == [2, 4]
    assert steps[0] is not None and steps[1] is not None and steps[1] > steps[0] > 0
    assert value(trainer_second, "policyopt_trainer_reward_mean", run_id=run_id) is not None
    assert value(trainer_second, "policyopt_trainer_runs", state="leased") == 1

    tokens = [
        value(text, "policyopt_rollout_tokens_total", run_id=run_id)
        for text in (rollout_first, rollout_second)
    ]
    assert tokens[0] is not None and tokens[1] is not None and tokens[1] > tokens[0] > 0
    assert (value(rollout_second, "policyopt_rollout_seconds_total", run_id=run_id) or 0) > 0
    calls = value(rollout_second, "policyopt_reward_call_duration_seconds_count", endpoint=endpoint.address)
    assert (calls or 0) >= 8  # one Score call per group

    if server_text is None:
        pytest.skip("the server's HTTP port did not serve /metrics (the dashboard app is not in place)")
    create_ok = value(
        server_text, "policyopt_rpc_requests_total", method="PolicyOptimizer/CreateRun", code="OK"
    )
    assert (create_ok or 0) >= 1
    assert value(server_text, "policyopt_prompts_queued", run_id=run_id, tenant="team") is not None
    assert value(server_text, "policyopt_groups_queued", run_id=run_id, tenant="team") is not None


def _scrape_server(stack: Stack) -> str | None:
    try:
        return scrape(stack.http_urls["server"], timeout_s=30)
    except OSError:
        return None
