"""Fixtures shared by every test package: one embedded Valkey, a data dir, the tiny model, a server.

One Valkey serves the session. Database 0 holds the session server's state and is never flushed
(``valkey_url``, ``redis_client``); tests that need an empty store get database 1, flushed before each
test (``fresh_redis_url``, ``fresh_redis``). Keep these small and generic; package-specific fixtures go in
that package's conftest.py, and plain helpers in ``tests/support``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey

# Every process a test starts serves /metrics; none may take the default port 8080, which a developer's
# own `policyopt up` (or another test run) may hold. Tests that need a fixed port set it themselves.
os.environ.setdefault("POLICYOPT_HTTP_PORT", "0")
# Worker processes the tests start load models in fp32: tests compare exact values, and POLICYOPT_DTYPE=auto
# is bf16 on CPUs with AMX/AVX512-BF16 (tests/workers/test_placement.py covers that choice).
os.environ.setdefault("POLICYOPT_DTYPE", "float32")


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """The session's embedded Valkey (no persistence), stopped when the session ends."""
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_url(valkey: EmbeddedValkey) -> str:
    """Database 0 of the session's Valkey: the session server's state, shared, never flushed."""
    return valkey.url


@pytest.fixture
def redis_client(valkey_url: str) -> Iterator[redis.Redis]:
    """A client of database 0, to look at what the session server wrote."""
    client = redis.Redis.from_url(valkey_url)
    yield client
    client.close()


@pytest.fixture
def fresh_redis_url(valkey: EmbeddedValkey) -> str:
    """Database 1 of the session's Valkey, emptied before the test: for workers driven directly."""
    url = valkey.url.rsplit("/", 1)[0] + "/1"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def fresh_redis(fresh_redis_url: str) -> Iterator[redis.Redis]:
    """A client of the emptied database 1."""
    client = redis.Redis.from_url(fresh_redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POLICYOPT_DATA_DIR for the session: adapters, model caches."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (context 512) with a chat template, built once."""
    from policyopt.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def local_allowances(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """Settings that let a test's service call loopback endpoints and load models under the session's temp dir."""
    from policyopt.core.outbound import LOCAL_ALLOWLIST

    return {"endpoint_allowlist": LOCAL_ALLOWLIST, "model_roots": (str(tmp_path_factory.getbasetemp()),)}


@pytest.fixture(scope="session")
def local_policy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """``local_allowances`` as a fixture, for tests that build their own Settings."""
    return local_allowances(tmp_path_factory)


@dataclass(frozen=True)
class ServerInfo:
    address: str
    settings: Settings
    keys: dict[str, str]  # tenant -> API key


@pytest.fixture(scope="session")
def server(valkey_url: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """The gRPC server in-process on a free port, with tenants ``a`` and ``b`` (keys ``key-a``, ``key-b``).

    It has the local allowances of ``policyopt up`` (reward endpoints on loopback), and the session's
    temporary directory is a model root, so tests name the tiny model by its path."""
    from policyopt.server.app import build_server

    keys = {"a": "key-a", "b": "key-b"}
    settings = Settings(
        redis_url=valkey_url,
        api_keys={key: tenant for tenant, key in keys.items()},
        port=0,
        data_dir=str(data_dir),
        max_active_runs_per_tenant=100_000,  # the session's tests leave their runs running
        dtype="float32",  # tests compare exact values; auto is bf16 on CPUs with AMX/AVX512-BF16
        **local_allowances(tmp_path_factory),
    )
    with build_server(settings, max_workers=16, poll_ms=200) as running:
        yield ServerInfo(address=running.address, settings=settings, keys=keys)
