"""Fixtures for the trainer tests: a Valkey-backed ``TrainerEnv`` (see tests/support/trainer.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from policyopt.core.settings import Settings

if TYPE_CHECKING:
    from support.trainer import TrainerEnv


@pytest.fixture
def trainer_env(
    fresh_redis_url: str, tiny_model_dir: Path, tmp_path: Path, local_policy: dict[str, tuple[str, ...]]
) -> Iterator[TrainerEnv]:
    """An empty Redis database, settings for trainers on it, and the session's tiny model (read-only)."""
    from support.trainer import TrainerEnv

    client = redis.Redis.from_url(fresh_redis_url)
    settings = Settings(
        redis_url=fresh_redis_url,
        data_dir=str(tmp_path / "data"),
        device="cpu",
        dtype="float32",  # exact comparisons; auto is bf16 on CPUs with AMX/AVX512-BF16
        torch_threads=1,
        claim_idle_ms=60000,
        **local_policy,
    )
    env = TrainerEnv(settings=settings, r=client, model_dir=tiny_model_dir)
    yield env
    for worker in env.workers:
        worker.close()
    client.close()
