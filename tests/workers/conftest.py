"""Fixtures for the worker tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey

if TYPE_CHECKING:
    from trainer_support import TrainerEnv

# -- trainer fixtures (tests/workers/test_trainer*.py) -------------------------------------------------


@pytest.fixture(scope="session")
def trainer_model_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny model (tests/conftest.py); read-only here."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def trainer_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False) as server:
        yield server


@pytest.fixture
def trainer_env(
    trainer_valkey: EmbeddedValkey, trainer_model_dir: Path, tmp_path: Path
) -> Iterator[TrainerEnv]:
    from trainer_support import TrainerEnv

    client = redis.Redis.from_url(trainer_valkey.url)
    client.flushall()
    settings = Settings(
        redis_url=trainer_valkey.url,
        data_dir=str(tmp_path / "data"),
        device="cpu",
        torch_threads=1,
        claim_idle_ms=60000,
    )
    env = TrainerEnv(settings=settings, r=client, model_dir=trainer_model_dir)
    yield env
    for worker in env.workers:
        worker.close()
    client.close()
