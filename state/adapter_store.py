"""Where adapter versions live: an ``AdapterStore`` interface and the local-directory default.

Layout of ``LocalAdapterStore(root)``::

    root/run_id/v000001/{adapter_config.json, adapter_model.safetensors, manifest.json}
    root/run_id/.tmp-v000002-1a2b3c4d/      a publish in progress (or abandoned by a crash)

A publish copies the files into a temporary directory under the run's directory, hashes them into
the manifest, writes the manifest last, fsyncs everything and renames the directory into place.
A version directory is complete iff it holds ``manifest.json``; readers never see a partial one.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from policyopt.core.errors import AlreadyExists, InvalidArgument, NotFound
from policyopt.core.types import AdapterManifest
from policyopt.state import adapter_manifest as manifests

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TMP_PREFIX = ".tmp-"


class AdapterStore(abc.ABC):
    """Versioned adapters per run. Versions are positive integers; 0 means the base model."""

    @abc.abstractmethod
    def publish(
        self, run_id: str, version: int, files_dir: Path, manifest: AdapterManifest
    ) -> AdapterManifest:
        """Store the files of ``files_dir`` as ``version`` atomically; returns the manifest with sha256s.

        Raises AlreadyExists when the version is already complete.
        """

    @abc.abstractmethod
    def open_version(self, run_id: str, version: int, *, verify: bool = False) -> Path:
        """A local directory holding the complete version (PEFT files + manifest); NotFound if absent."""

    @abc.abstractmethod
    def list_versions(self, run_id: str) -> list[int]:
        """Complete versions of the run, ascending."""

    @abc.abstractmethod
    def read_manifest(self, run_id: str, version: int) -> AdapterManifest:
        """The manifest of a complete version; NotFound if absent."""

    def latest_version(self, run_id: str) -> int:
        """The newest complete version, 0 when there is none."""
        versions = self.list_versions(run_id)
        return versions[-1] if versions else 0

    def discard_incomplete(self, run_id: str) -> int:
        """Remove publishes that never completed (crash leftovers); call only while owning the run."""
        return 0

    def remove_version(self, run_id: str, version: int) -> None:
        """Delete a complete version (retention); a store that cannot delete keeps it."""
        log.info(
            "adapter store %s keeps %s v%d: it cannot delete versions", type(self).__name__, run_id, version
        )


class LocalAdapterStore(AdapterStore):
    """Adapters in a local (or mounted shared) directory tree."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise InvalidArgument(f"run id {run_id!r} cannot name an adapter directory")
        return self.root / run_id

    def version_dir(self, run_id: str, version: int) -> Path:
        return self.run_dir(run_id) / f"v{version:06d}"

    def publish(
        self, run_id: str, version: int, files_dir: Path, manifest: AdapterManifest
    ) -> AdapterManifest:
        if version < 1 and not (version == 0 and manifest.parent):  # 0: a warm start's initial adapter
            raise InvalidArgument(f"adapter versions start at 1, got {version}")
        missing = [n for n in manifests.ADAPTER_FILES if not (Path(files_dir) / n).is_file()]
        if missing:
            raise InvalidArgument(f"{files_dir} lacks {missing}; save the adapter with save_pretrained first")
        target = self.version_dir(run_id, version)
        if (target / manifests.MANIFEST_FILE).exists():
            raise AlreadyExists(f"adapter {run_id} v{version} is already published in {target}")
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f"{_TMP_PREFIX}v{version:06d}-{uuid.uuid4().hex[:8]}"
        try:
            result = self._fill(tmp, Path(files_dir), run_id, version, manifest)
            if target.exists():  # a directory without a manifest: debris, never a version
                shutil.rmtree(target)
            os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if (target / manifests.MANIFEST_FILE).exists():  # another publisher won the rename
                raise AlreadyExists(
                    f"adapter {run_id} v{version} was published concurrently in {target}"
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifests.fsync_path(run_dir)
        return result

    def _fill(
        self, tmp: Path, files_dir: Path, run_id: str, version: int, manifest: AdapterManifest
    ) -> AdapterManifest:
        tmp.mkdir()
        for src in sorted(files_dir.iterdir()):
            if src.is_file() and src.name != manifests.MANIFEST_FILE:
                shutil.copyfile(src, tmp / src.name)
                manifests.fsync_path(tmp / src.name)
        result = dataclasses.replace(
            manifest, run_id=run_id, version=version, files=manifests.hash_files(tmp)
        )
        manifests.write_manifest(tmp, result)
        manifests.fsync_path(tmp)
        return result

    def open_version(self, run_id: str, version: int, *, verify: bool = False) -> Path:
        path = self.version_dir(run_id, version)
        manifest = self._read(run_id, version, path)
        if verify:
            manifests.verify_files(path, manifest)
        return path

    def list_versions(self, run_id: str) -> list[int]:
        run_dir = self.run_dir(run_id)
        if not run_dir.is_dir():
            return []
        versions = []
        for entry in run_dir.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and (entry / manifests.MANIFEST_FILE).is_file():
                versions.append(int(match.group(1)))
        return sorted(versions)

    def read_manifest(self, run_id: str, version: int) -> AdapterManifest:
        return self._read(run_id, version, self.version_dir(run_id, version))

    def _read(self, run_id: str, version: int, path: Path) -> AdapterManifest:
        try:
            return manifests.read_manifest(path)
        except NotFound as exc:
            known = self.list_versions(run_id)
            raise NotFound(
                f"run {run_id} has no adapter version {version} on disk; versions: {known or 'none'}"
            ) from exc

    def remove_version(self, run_id: str, version: int) -> None:
        """Remove the manifest first (the version is incomplete from then on), then the files."""
        path = self.version_dir(run_id, version)
        (path / manifests.MANIFEST_FILE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)

    def discard_incomplete(self, run_id: str) -> int:
        run_dir = self.run_dir(run_id)
        if not run_dir.is_dir():
            return 0
        removed = 0
        for entry in run_dir.iterdir():
            debris = entry.name.startswith(_TMP_PREFIX) or (
                _VERSION_DIR.match(entry.name) and not (entry / manifests.MANIFEST_FILE).exists()
            )
            if debris and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed %d incomplete adapter publish(es) of run %s", removed, run_id)
        return removed


__all__ = ["AdapterStore", "LocalAdapterStore"]
