"""``open_adapter``, the lookup the rollout worker and the proxy share: a fresh run's version 0 is the base
model, a published version is its directory, and a version the store lacks says which store to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyopt.core.errors import FailedPrecondition
from policyopt.core.types import AdapterManifest, Run, RunConfig
from policyopt.state import LocalAdapterStore
from policyopt.workers.adapter_refs import open_adapter


def published_store(root: Path, run: Run, version: int) -> LocalAdapterStore:
    files = root / "files"
    files.mkdir()
    (files / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (files / "adapter_model.safetensors").write_bytes(b"weights")
    store = LocalAdapterStore(root / "adapters")
    manifest = AdapterManifest(
        run_id=run.run_id, version=version, step=version, base_model="tiny", method="grpo"
    )
    store.publish(run.run_id, version, files, manifest)
    return store


def test_a_fresh_runs_version_zero_is_the_base_model(tmp_path: Path) -> None:
    run = Run("run-1", "a", RunConfig(base_model="tiny"))
    assert open_adapter(LocalAdapterStore(tmp_path), run, reader="the proxy") is None


def test_the_newest_version_or_a_given_one_is_its_published_directory(tmp_path: Path) -> None:
    run = Run("run-1", "a", RunConfig(base_model="tiny"), version=1)
    store = published_store(tmp_path, run, 1)
    newest = open_adapter(store, run, reader="the proxy")
    assert newest is not None and newest.name == "run-1@v1" and newest.path == store.version_dir("run-1", 1)
    assert open_adapter(store, run, 0, reader="the proxy") is None


def test_a_version_the_store_lacks_names_the_reader_and_the_store(tmp_path: Path) -> None:
    run = Run("run-1", "a", RunConfig(base_model="tiny"), version=2)
    store = published_store(tmp_path, Run("run-1", "a", RunConfig(base_model="tiny")), 1)
    with pytest.raises(
        FailedPrecondition, match="the rollout worker must read the trainer's adapter store"
    ) as info:
        open_adapter(store, run, reader="the rollout worker")
    assert f"POLICYOPT_ADAPTER_STORE, here {tmp_path / 'adapters'}" in str(info.value)
