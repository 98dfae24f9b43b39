"""PullAdapter streams a published version in chunks; the SDK verifies sha256 and renames into place."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import redis

from policyopt.client import AdapterIntegrityError, NotFound, RunHandle
from policyopt.core.types import AdapterManifest
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore

WEIGHTS_BYTES = (2 << 20) + 12345  # more than two 1 MiB chunks


def publish_version(
    adapter_root: Path, r: redis.Redis, run: RunHandle, version: int, work_dir: Path
) -> AdapterManifest:
    """Write a PEFT-looking version into the adapter store and commit it to Redis, as the trainer does."""
    files_dir = work_dir / f"files-{version}"
    files_dir.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (files_dir / "adapter_config.json").write_text(json.dumps(config))
    (files_dir / "adapter_model.safetensors").write_bytes(os.urandom(WEIGHTS_BYTES))
    manifest = AdapterManifest(
        run_id=run.run_id, version=version, step=version, base_model=run.info.base_model, method="grpo",
        metrics={"reward/mean": 0.25 * version},
    )  # fmt: skip
    published = LocalAdapterStore(adapter_root).publish(run.run_id, version, files_dir, manifest)
    RunStore(r).commit_step(WorkQueue(r), published, [])
    return published


def test_pull_writes_the_files_and_manifest_verified(
    server, run_a: RunHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    published = publish_version(server.settings.adapter_root, redis_client, run_a, 1, tmp_path)
    path = run_a.pull_adapter(1, tmp_path / "dest")
    assert path == tmp_path / "dest" / run_a.run_id / "v000001"
    source = LocalAdapterStore(server.settings.adapter_root).version_dir(run_a.run_id, 1)
    for name in published.files:
        assert (path / name).read_bytes() == (source / name).read_bytes()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"] == published.files and manifest["version"] == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"


def test_latest_pulls_the_newest_version_and_list_shows_all(
    server, run_a: RunHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    for version in (1, 2):
        publish_version(server.settings.adapter_root, redis_client, run_a, version, tmp_path)
    assert run_a.pull_adapter("latest", tmp_path / "dest").name == "v000002"
    assert [v.version for v in run_a.list_adapters()] == [1, 2]
    assert run_a.list_adapters()[1].metrics == {"reward/mean": 0.5}


def test_a_corrupted_file_fails_the_sha256_check(
    server, run_a: RunHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    publish_version(server.settings.adapter_root, redis_client, run_a, 1, tmp_path)
    weights = (
        LocalAdapterStore(server.settings.adapter_root).version_dir(run_a.run_id, 1)
        / "adapter_model.safetensors"
    )
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match="adapter_model.safetensors .* sha256"):
        run_a.pull_adapter(1, tmp_path / "dest")
    assert not (tmp_path / "dest" / run_a.run_id / "v000001").exists()
    assert not list((tmp_path / "dest" / run_a.run_id).iterdir()), "temporary directory left behind"


def test_a_version_that_does_not_exist_is_not_found(run_a: RunHandle, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no adapter version yet"):
        run_a.pull_adapter("latest", tmp_path)


def test_wait_for_version_returns_when_the_version_is_published(
    server, run_a: RunHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    publisher = threading.Timer(
        0.5,
        lambda: [
            publish_version(server.settings.adapter_root, redis_client, run_a, v, tmp_path) for v in (1, 2)
        ],
    )
    publisher.start()
    try:
        version = run_a.wait_for_version(2, timeout=30)
    finally:
        publisher.join()
    assert version.version == 2 and version.files


def test_wait_for_version_times_out(run_a: RunHandle) -> None:
    with pytest.raises(TimeoutError, match="did not publish version 1"):
        run_a.wait_for_version(1, timeout=0.5)
