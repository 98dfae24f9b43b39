"""``serving-sync --pull-to`` against a real server and a real vLLM CPU server, with no shared storage.

Versions are published into the server's adapter store as the trainer does (``Publisher``, tenant ``a``);
the sync sees only the gRPC API (key ``key-a``) and a local directory that is not the adapter store.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.vllm import Publisher, wait_until

from policyopt.cli.main import main as cli_main
from policyopt.client import Client
from policyopt.client.errors import AdapterIntegrityError
from policyopt.server.app import build_server
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.serving_pull import PullSync

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

FOLLOW_TIMEOUT_S = 60.0


@pytest.fixture
def publisher(redis_client: redis.Redis, server: Any, tiny_model_dir: Path, tmp_path: Path) -> Publisher:
    return Publisher(
        redis_client, server.settings.adapter_root, tiny_model_dir, tmp_path / "staging", tenant="a"
    )


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["a"]) as made:
        yield made


@pytest.fixture
def pull_to(tmp_path: Path) -> Path:
    return tmp_path / "pulled"


def _managed(vllm: VLLMServer, run_id: str) -> set[str]:
    return {name for name in vllm.client().loaded_adapters() if name.startswith(run_id + "@")}


def _make(client: Client, pull_to: Path, vllm: VLLMServer, run_id: str) -> PullSync:
    return PullSync(
        client, pull_to, [vllm.url], run_id=run_id, reconcile_interval_s=0.5, backoff_s=(0.2, 1.0)
    )


@contextlib.contextmanager
def running(sync: PullSync) -> Iterator[PullSync]:
    stop = threading.Event()
    thread = threading.Thread(target=sync.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sync
    finally:
        stop.set()
        thread.join(10)


def _served(sync: PullSync, name: str) -> bool:
    return name in {s.name for s in sync.served}


def test_serves_consecutive_versions_from_pulled_copies_and_deletes_stale_ones(
    client: Client, pull_to: Path, vllm_server: VLLMServer, publisher: Publisher
) -> None:
    run_id = publisher.run_id
    with running(_make(client, pull_to, vllm_server, run_id)) as sync:
        for version in (1, 2, 3):
            name = f"{run_id}@v{version}"
            store_dir, _ = publisher.publish(version)
            assert wait_until(lambda name=name: _served(sync, name), FOLLOW_TIMEOUT_S), name
            assert wait_until(lambda name=name: _managed(vllm_server, run_id) == {name}, 10.0)
            completion = vllm_server.client().completions({"model": name, "prompt": "hi", "max_tokens": 2})
            assert completion["choices"][0]["text"] is not None
            local = pull_to / run_id / f"v{version:06d}"
            assert not local.is_relative_to(store_dir.parent.parent)
            manifest = {v.version: v for v in client.list_adapters(run_id)}[version]
            assert manifest.files
            for file_name, digest in manifest.files.items():
                assert hashlib.sha256((local / file_name).read_bytes()).hexdigest() == digest
            if version > 1:
                stale = pull_to / run_id / f"v{version - 1:06d}"
                assert wait_until(lambda stale=stale: not stale.exists(), 10.0), stale
        assert sync.pulled == [(run_id, 1), (run_id, 2), (run_id, 3)]
        assert sorted(p.name for p in (pull_to / run_id).iterdir()) == ["v000003"]


def test_refuses_a_corrupt_version_and_keeps_serving_the_previous_one(
    client: Client, pull_to: Path, vllm_server: VLLMServer, publisher: Publisher, tmp_path: Path
) -> None:
    run_id = publisher.run_id

    def truncate(version_dir: Path) -> None:  # a partial file: its digest no longer matches the manifest
        weights = version_dir / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    with running(_make(client, pull_to, vllm_server, run_id)) as sync:
        publisher.publish(1)
        assert wait_until(lambda: _served(sync, f"{run_id}@v1"), FOLLOW_TIMEOUT_S)
        publisher.publish(2, before_commit=truncate)
        assert wait_until(lambda: any(v == 2 for _, v, _ in sync.refused), FOLLOW_TIMEOUT_S)
        assert wait_until(lambda: len(sync.refused) >= 2, 10.0)  # it retries, and refuses again
    assert "sha256" in sync.refused[0][2]
    assert _managed(vllm_server, run_id) == {f"{run_id}@v1"}
    assert sorted(p.name for p in (pull_to / run_id).iterdir()) == ["v000001"]  # nothing partial left
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        client.pull_adapter(run_id, 2, tmp_path / "direct")
    vllm_server.client().unload_lora(f"{run_id}@v1")


def test_a_restarted_sync_reuses_verified_copies_without_downloading(
    client: Client, pull_to: Path, vllm_server: VLLMServer, publisher: Publisher
) -> None:
    run_id = publisher.run_id
    publisher.publish(1)
    with running(_make(client, pull_to, vllm_server, run_id)) as first:
        assert wait_until(lambda: _served(first, f"{run_id}@v1"), FOLLOW_TIMEOUT_S)
    assert first.pulled == [(run_id, 1)]
    with running(_make(client, pull_to, vllm_server, run_id)) as second:
        assert wait_until(lambda: _served(second, f"{run_id}@v1"), FOLLOW_TIMEOUT_S)
        assert second.pulled == []
        publisher.publish(2)
        assert wait_until(lambda: _served(second, f"{run_id}@v2"), FOLLOW_TIMEOUT_S)
    assert second.pulled == [(run_id, 2)]
    vllm_server.client().unload_lora(f"{run_id}@v2")


def test_reconnects_after_the_server_restarts(
    server: Any, pull_to: Path, vllm_server: VLLMServer, publisher: Publisher
) -> None:
    run_id = publisher.run_id
    own = build_server(server.settings.replace(port=0), max_workers=8, poll_ms=200).start()
    port = own.port
    with (
        Client(own.address, api_key="key-a") as client,
        running(_make(client, pull_to, vllm_server, run_id)) as sync,
    ):
        publisher.publish(1)
        assert wait_until(lambda: _served(sync, f"{run_id}@v1"), FOLLOW_TIMEOUT_S)
        own.stop(grace=0)
        publisher.publish(2)  # published while the server is down
        own = build_server(server.settings.replace(port=port), max_workers=8, poll_ms=200).start()
        try:
            assert wait_until(lambda: _served(sync, f"{run_id}@v2"), FOLLOW_TIMEOUT_S)
            assert _managed(vllm_server, run_id) == {f"{run_id}@v2"}
        finally:
            own.stop(grace=0)
    vllm_server.client().unload_lora(f"{run_id}@v2")


def test_cli_once_pulls_and_loads_the_newest_version(
    server: Any, pull_to: Path, vllm_server: VLLMServer, publisher: Publisher
) -> None:
    run_id = publisher.run_id
    publisher.publish(1)
    publisher.publish(2)
    args = ["--address", server.address, "--api-key", "key-a", "serving-sync", "--vllm", vllm_server.url]
    code = cli_main([*args, "--run", run_id, "--pull-to", str(pull_to), "--once"])
    assert code == 0
    assert _managed(vllm_server, run_id) == {f"{run_id}@v2"}
    assert sorted(p.name for p in (pull_to / run_id).iterdir()) == ["v000002"]
    vllm_server.client().unload_lora(f"{run_id}@v2")
