"""Session fixtures shared by every test package: an embedded Valkey, a data dir, the tiny model, a server.

Keep these small and generic; package-specific fixtures go in that package's conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an embedded Valkey that lives for the whole session (no persistence)."""
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False) as valkey:
        yield valkey.url


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POLICYOPT_DATA_DIR for the session: adapters, model caches."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (context 512) with a chat template, built once."""
    from policyopt.workers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@dataclass(frozen=True)
class ServerInfo:
    address: str
    settings: Settings
    keys: dict[str, str]  # tenant -> API key


@pytest.fixture(scope="session")
def server(valkey_url: str, data_dir: Path) -> Iterator[ServerInfo]:
    """The gRPC server in-process on a free port, with tenants ``a`` and ``b`` (keys ``key-a``, ``key-b``)."""
    from policyopt.server.app import build_server

    keys = {"a": "key-a", "b": "key-b"}
    settings = Settings(
        redis_url=valkey_url,
        api_keys={key: tenant for tenant, key in keys.items()},
        port=0,
        data_dir=str(data_dir),
    )
    with build_server(settings, max_workers=16, poll_ms=200) as running:
        yield ServerInfo(address=running.address, settings=settings, keys=keys)
