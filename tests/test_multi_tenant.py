"""Many tenants on one ``policyopt up``: 16 runs of 3 tenants all train, and none waits far behind the rest."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, RewardServer
from policyopt.core.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TENANTS = ("alpha", "beta", "gamma")
RUNS = 16
DEADLINE_S = 600.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("multi-tenant-data")
    settings = Settings(
        data_dir=str(data_dir),
        port=0,
        http_port=-1,  # no HTTP: never the default 8080 in tests
        api_keys={f"key-{t}": t for t in TENANTS},
        model_roots=(str(tmp_path_factory.getbasetemp()),),
    )
    with start_stack(settings, log_dir=data_dir / "logs") as running:
        yield running


def digit_share(prompt: str, completion: str, metadata: dict[str, object]) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def test_sixteen_runs_of_three_tenants_all_reach_version_2_and_none_waits_far_behind(
    stack: Stack, tiny_model_dir: Path
) -> None:
    """Runs that never end (max_steps=0) with 4 steps' worth of prompts each, all created at once.

    A trainer with a fixed set of held runs (4 before) never trains the other 12. The bound: the
    slowest run reaches version 2 within twice the median run's time plus 20 s. Every run's work is the
    same and the scheduler serves the least-served ready run first, so runs finish close together; the
    20 s cover one rollout batch and one step of every other run on a noisy 2-core machine.
    """
    clients = {t: Client(stack.address, api_key=f"key-{t}") for t in TENANTS}
    endpoints = [RewardServer(digit_share).start() for _ in TENANTS]
    try:
        for client, endpoint in zip(clients.values(), endpoints, strict=True):
            client.register_reward_endpoint("digits", endpoint.address)
        runs, started = [], time.monotonic()
        for i in range(RUNS):
            run = clients[TENANTS[i % 3]].create_run(
                base_model=str(tiny_model_dir),
                method="grpo",
                reward_endpoint="digits",
                group_size=4,
                prompts_per_step=2,
                max_new_tokens=8,
                learning_rate=5e-3,
                seed=i,
            )
            run.submit_prompts([f"run {i}: say a number like {k}" for k in range(8)])
            runs.append(run)
        reached: dict[str, float] = {}
        while len(reached) < RUNS and time.monotonic() - started < DEADLINE_S:
            for run in runs:
                if run.run_id not in reached and run.refresh().version >= 2:
                    reached[run.run_id] = time.monotonic() - started
            time.sleep(0.5)
        behind = {r.run_id: r.refresh().version for r in runs if r.run_id not in reached}
        assert not behind, f"runs below version 2 after {DEADLINE_S:.0f}s: {behind}"
        median = statistics.median(reached.values())
        slowest = max(reached.values())
        assert slowest <= 2 * median + 20, f"slowest {slowest:.1f}s vs median {median:.1f}s: {reached}"
        for k, tenant in enumerate(TENANTS):  # each tenant sees exactly its own runs
            own = {r.run_id for r in runs[k::3]}
            assert {info.run_id for info in clients[tenant].list_runs()} == own
    finally:
        for client in clients.values():
            client.close()
        for endpoint in endpoints:
            endpoint.stop()
