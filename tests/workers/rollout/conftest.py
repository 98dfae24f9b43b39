"""Fixtures of the rollout tests: the worker's settings and a healthy RewardService."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.rollout import ScriptedRewardService, reward_server

from policyopt.core.settings import Settings


@pytest.fixture
def settings(fresh_redis_url: str, tmp_path: Path, local_policy: dict[str, tuple[str, ...]]) -> Settings:
    return Settings(
        redis_url=fresh_redis_url, data_dir=str(tmp_path), device="cpu", dtype="float32", torch_threads=1,
        reward_retries=1, reward_timeout_s=2.0, claim_idle_ms=60000, **local_policy,
    )  # fmt: skip


@pytest.fixture
def service() -> Iterator[tuple[ScriptedRewardService, str]]:
    scripted = ScriptedRewardService()
    with reward_server(scripted) as address:
        yield scripted, address
