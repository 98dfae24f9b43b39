"""LocalAdapterStore: atomic publish, incomplete directories ignored, sha256 verification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from policyopt.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from policyopt.core.types import AdapterManifest
from policyopt.state import LocalAdapterStore, verify_files
from policyopt.state.adapter_manifest import MANIFEST_FILE, read_manifest

RUN = "run-abc"


def _adapter_files(tmp_path: Path, payload: bytes = b"weights") -> Path:
    files = tmp_path / "staging"
    files.mkdir(exist_ok=True)
    (files / "adapter_config.json").write_text('{"r": 4}')
    (files / "adapter_model.safetensors").write_bytes(payload)
    return files


def _manifest(version: int = 1) -> AdapterManifest:
    return AdapterManifest(run_id=RUN, version=version, step=version, base_model="tiny", method="grpo",
                           metrics={"reward/mean": 0.5}, group_ids=["g1", "g2"])  # fmt: skip


def test_publish_writes_files_and_a_manifest_with_their_sha256(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "adapters")
    manifest = store.publish(RUN, 1, _adapter_files(tmp_path), _manifest())

    path = store.open_version(RUN, 1, verify=True)
    assert path == tmp_path / "adapters" / RUN / "v000001"
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        MANIFEST_FILE,
    ]
    assert manifest.files["adapter_model.safetensors"] == hashlib.sha256(b"weights").hexdigest()
    assert read_manifest(path) == manifest == store.read_manifest(RUN, 1)
    assert manifest.group_ids == ["g1", "g2"] and manifest.metrics == {"reward/mean": 0.5}
    assert [p.name for p in (tmp_path / "adapters" / RUN).iterdir()] == ["v000001"]  # no temp dir left


def test_versions_list_in_order_and_latest_is_the_newest(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path)
    assert store.list_versions(RUN) == [] and store.latest_version(RUN) == 0
    for version in (1, 2, 10):
        store.publish(RUN, version, _adapter_files(tmp_path, bytes([version])), _manifest(version))
    assert store.list_versions(RUN) == [1, 2, 10]
    assert store.latest_version(RUN) == 10


def test_incomplete_directories_are_ignored_and_discarded(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path)
    store.publish(RUN, 1, _adapter_files(tmp_path), _manifest())
    crashed_tmp = tmp_path / RUN / ".tmp-v000002-deadbeef"
    crashed_tmp.mkdir()
    (crashed_tmp / "adapter_model.safetensors").write_bytes(b"half")
    no_manifest = tmp_path / RUN / "v000003"
    no_manifest.mkdir()

    assert store.list_versions(RUN) == [1]
    with pytest.raises(NotFound, match="versions: \\[1\\]"):
        store.open_version(RUN, 3)
    assert store.discard_incomplete(RUN) == 2
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == ["v000001"]


def test_a_failed_publish_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalAdapterStore(tmp_path)

    def broken_rename(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk gone"):
        store.publish(RUN, 1, _adapter_files(tmp_path), _manifest())
    assert store.list_versions(RUN) == []
    assert list((tmp_path / RUN).iterdir()) == []


def test_publishing_a_version_twice_is_refused(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path)
    store.publish(RUN, 1, _adapter_files(tmp_path), _manifest())
    with pytest.raises(AlreadyExists):
        store.publish(RUN, 1, _adapter_files(tmp_path, b"other"), _manifest())
    assert (
        store.read_manifest(RUN, 1).files["adapter_model.safetensors"]
        == hashlib.sha256(b"weights").hexdigest()
    )


def test_publish_refuses_a_directory_without_peft_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidArgument, match="adapter_model.safetensors"):
        LocalAdapterStore(tmp_path / "a").publish(RUN, 1, empty, _manifest())


def test_verify_detects_a_corrupted_file(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path)
    manifest = store.publish(RUN, 1, _adapter_files(tmp_path), _manifest())
    path = store.version_dir(RUN, 1)
    (path / "adapter_model.safetensors").write_bytes(b"tampered")

    with pytest.raises(FailedPrecondition, match="adapter_model.safetensors has the wrong sha256"):
        verify_files(path, manifest)
    with pytest.raises(FailedPrecondition):
        store.open_version(RUN, 1, verify=True)
    (path / "adapter_config.json").unlink()
    with pytest.raises(FailedPrecondition, match="adapter_config.json is missing"):
        verify_files(path, manifest)


def test_run_ids_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        LocalAdapterStore(tmp_path).list_versions("../etc")
