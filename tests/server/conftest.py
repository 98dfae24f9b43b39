"""Fixtures for the server tests: clients of both tenants and a reward endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policyopt.client import Client, RewardServer, RunHandle


@pytest.fixture
def client_a(server) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client


@pytest.fixture
def client_b(server) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["b"], timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def reward_endpoint() -> Iterator[RewardServer]:
    with RewardServer(lambda prompt, completion, metadata: 1.0) as endpoint:
        yield endpoint


@pytest.fixture
def run_a(client_a: Client, tiny_model_dir: Path, reward_endpoint: RewardServer) -> RunHandle:
    """A fresh running run of tenant ``a`` on the tiny model, with endpoint ``ones``."""
    client_a.register_reward_endpoint("ones", reward_endpoint.address)
    return client_a.create_run(
        str(tiny_model_dir),
        method="grpo",
        reward_endpoint="ones",
        group_size=2,
        prompts_per_step=1,
        max_new_tokens=8,
    )
