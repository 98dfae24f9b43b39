"""Serving sync against a real vLLM CPU server: follows publications, unloads stale versions, survives restarts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.vllm import Publisher, wait_until

from policyopt.cli.main import main as cli_main
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.serving import ServingSync

pytestmark = pytest.mark.vllm

FOLLOW_TIMEOUT_S = 60.0


@pytest.fixture
def publisher(
    fresh_redis: redis.Redis, adapter_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> Publisher:
    return Publisher(fresh_redis, adapter_root, tiny_model_dir, tmp_path / "staging")


def _managed(server: VLLMServer, run_id: str) -> set[str]:
    return {name for name in server.client().loaded_adapters() if name.startswith(run_id + "@")}


@contextlib.contextmanager
def running(sync: ServingSync) -> Iterator[ServingSync]:
    """``sync.run_forever`` in a thread for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=sync.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sync
    finally:  # also when the test fails, so the thread does not outlive it
        stop.set()
        thread.join(10)


@pytest.fixture
def sync(
    fresh_redis: redis.Redis, adapter_root: Path, vllm_server: VLLMServer, publisher: Publisher
) -> Iterator[ServingSync]:
    made = ServingSync(
        fresh_redis, adapter_root, [vllm_server.url], run_id=publisher.run_id, reconcile_interval_s=0.5
    )
    with running(made):
        yield made


def test_follows_three_consecutive_publishes_and_unloads_stale_versions(
    sync: ServingSync, publisher: Publisher, vllm_server: VLLMServer
) -> None:
    for version in (1, 2, 3):
        name = f"{publisher.run_id}@v{version}"
        publisher.publish(version)
        assert wait_until(lambda name=name: name in {s.name for s in sync.served}, FOLLOW_TIMEOUT_S), name
        assert wait_until(lambda name=name: _managed(vllm_server, publisher.run_id) == {name}, 10.0)
        completion = vllm_server.client().completions({"model": name, "prompt": "hi", "max_tokens": 2})
        assert completion["choices"][0]["text"] is not None
    latencies = [s.latency_s for s in sync.served]
    print("publish-to-served latencies (s):", [f"{x:.3f}" for x in latencies])
    assert [s.name for s in sync.served] == [f"{publisher.run_id}@v{v}" for v in (1, 2, 3)]
    assert all(0 < x < FOLLOW_TIMEOUT_S for x in latencies)


def test_pinned_versions_stay_loaded_beside_the_newest(
    fresh_redis: redis.Redis, adapter_root: Path, vllm_server: VLLMServer, publisher: Publisher
) -> None:
    sync = ServingSync(
        fresh_redis,
        adapter_root,
        [vllm_server.url],
        run_id=publisher.run_id,
        pins=["1"],
        reconcile_interval_s=0.5,
    )
    wanted = {f"{publisher.run_id}@v1", f"{publisher.run_id}@v3"}
    with running(sync):
        for version in (1, 2, 3):
            publisher.publish(version)
        assert wait_until(lambda: _managed(vllm_server, publisher.run_id) == wanted, FOLLOW_TIMEOUT_S)
    assert f"{publisher.run_id}@v3" in {s.name for s in sync.served}


def test_leaves_adapters_of_other_runs_alone(
    sync: ServingSync, publisher: Publisher, vllm_server: VLLMServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from support.vllm import write_lora

    foreign = write_lora(tiny_model_dir, tmp_path / "foreign", seed=5)
    vllm_server.client().load_lora("someone-else@v1", str(foreign))
    publisher.publish(1)
    assert wait_until(lambda: len(sync.served) == 1, FOLLOW_TIMEOUT_S)
    assert "someone-else@v1" in vllm_server.client().loaded_adapters()
    vllm_server.client().unload_lora("someone-else@v1")


def test_cli_once_loads_the_newest_version(
    fresh_redis_url: str, adapter_root: Path, vllm_server: VLLMServer, publisher: Publisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    publisher.publish(1)
    publisher.publish(2)
    monkeypatch.setenv("REDIS_URL", fresh_redis_url)
    monkeypatch.setenv("POLICYOPT_ADAPTER_STORE", str(adapter_root))
    code = cli_main(["serving-sync", "--vllm", vllm_server.url, "--run", publisher.run_id, "--once"])
    assert code == 0
    assert _managed(vllm_server, publisher.run_id) == {f"{publisher.run_id}@v2"}


def test_reloads_everything_after_a_vllm_restart(
    sync: ServingSync, publisher: Publisher, vllm_server: VLLMServer
) -> None:
    """Runs last in this module: it restarts the session's server (about 40 s)."""
    publisher.publish(1)
    name = f"{publisher.run_id}@v1"
    assert wait_until(lambda: len(sync.served) == 1, FOLLOW_TIMEOUT_S)
    old_pid = vllm_server.process.pid if vllm_server.process else None
    vllm_server.restart()  # a fresh vLLM forgets every runtime-loaded adapter
    assert vllm_server.process is not None and vllm_server.process.pid != old_pid
    assert wait_until(lambda: _managed(vllm_server, publisher.run_id) == {name}, FOLLOW_TIMEOUT_S)
    completion = vllm_server.client().completions({"model": name, "prompt": "hi", "max_tokens": 2})
    assert completion["choices"]
