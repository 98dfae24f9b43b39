"""Writing a pulled adapter: chunks into a temporary directory, sha256-checked, then one rename.

The result is ``dest_dir/<run_id>/v000002/`` holding the PEFT files and ``manifest.json``. Nothing the
server sends becomes a path unchecked: the run id must be a run id, the version a non-negative integer and
every file name one plain component (``core.identifiers``), else AdapterIntegrityError; and every path
written must resolve inside ``dest_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from policyopt.client._convert import version_from_proto
from policyopt.client.errors import AdapterIntegrityError
from policyopt.client.types import AdapterVersion
from policyopt.core.identifiers import MAX_INT64, is_plain_file_name, is_run_id, quote
from policyopt.v1 import policyopt_pb2 as pb


def adapter_path(dest_dir: str | os.PathLike[str], run_id: str, version: int) -> Path:
    return Path(dest_dir) / run_id / f"v{version:06d}"


def _safe_name(name: str) -> str:
    if not is_plain_file_name(name) or name == "manifest.json":
        raise AdapterIntegrityError(f"the server sent an unsafe or reserved file name {quote(name)}")
    return name


def _checked_manifest(manifest: AdapterVersion) -> AdapterVersion:
    """The manifest, when its run id, version and file names are safe to build paths from."""
    if not is_run_id(manifest.run_id):
        raise AdapterIntegrityError(
            f"the server sent a manifest with a malformed run id {quote(manifest.run_id)}"
        )
    if not 0 <= manifest.version <= MAX_INT64:
        raise AdapterIntegrityError(
            f"the server sent a manifest with version {manifest.version}; versions are >= 0"
        )
    for name in manifest.files:
        _safe_name(name)
    return manifest


def _inside(root: Path, path: Path) -> Path:
    """``path`` when it resolves inside ``root`` (links followed), else AdapterIntegrityError."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise AdapterIntegrityError(f"the pull would write {path}, outside {root}; refusing")
    return path


class AdapterWriter:
    """Feed every ``AdapterChunk`` to ``add``, then ``finish`` returns the final directory.

    As a context manager it removes what an unfinished pull left behind.
    """

    def __init__(self, dest_dir: str | os.PathLike[str]) -> None:
        self.dest_dir = Path(dest_dir)
        self.manifest: AdapterVersion | None = None
        self._tmp: Path | None = None
        self._file: BinaryIO | None = None
        self._name = ""
        self._digest = hashlib.sha256()
        self._done: set[str] = set()

    def __enter__(self) -> AdapterWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    def add(self, chunk: pb.AdapterChunk) -> None:
        if chunk.HasField("manifest"):
            self._start(_checked_manifest(version_from_proto(chunk.manifest)))
        if self.manifest is None or self._tmp is None:
            raise AdapterIntegrityError("the adapter stream did not begin with its manifest")
        if not chunk.file_name:
            return
        if chunk.file_name != self._name:
            self._open(chunk.file_name)
        assert self._file is not None
        self._file.write(chunk.data)
        self._digest.update(chunk.data)
        if chunk.last:
            self._close_file(chunk.sha256)

    def _start(self, manifest: AdapterVersion) -> None:
        if self.manifest is not None:
            raise AdapterIntegrityError("the adapter stream sent a second manifest")
        self.manifest = manifest
        parent = _inside(self.dest_dir, adapter_path(self.dest_dir, manifest.run_id, manifest.version).parent)
        parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".v{manifest.version:06d}-", dir=parent))

    def _open(self, name: str) -> None:
        assert self.manifest is not None and self._tmp is not None
        if self._file is not None:
            raise AdapterIntegrityError(f"file {self._name} ended without its last chunk")
        if _safe_name(name) not in self.manifest.files or name in self._done:
            raise AdapterIntegrityError(
                f"the server sent {name}, which the manifest does not list (or sent twice)"
            )
        self._name = name
        self._digest = hashlib.sha256()
        self._file = _inside(self.dest_dir, self._tmp / name).open("xb")

    def _close_file(self, sent_sha256: str) -> None:
        assert self._file is not None and self.manifest is not None
        self._file.close()
        self._file = None
        actual = self._digest.hexdigest()
        expected = self.manifest.files[self._name]
        if actual != expected or (sent_sha256 and sent_sha256 != expected):
            raise AdapterIntegrityError(
                f"{self._name} of run {self.manifest.run_id} v{self.manifest.version} has sha256 {actual}, "
                f"the manifest says {expected}; the stored adapter is corrupt or changed, pull again or republish"
            )
        self._done.add(self._name)
        self._name = ""

    def finish(self) -> Path:
        """Check every file arrived, write manifest.json, and move the directory into place."""
        if self.manifest is None or self._tmp is None:
            raise AdapterIntegrityError("the adapter stream was empty")
        missing = sorted(set(self.manifest.files) - self._done)
        if missing or self._file is not None:
            raise AdapterIntegrityError(
                f"the adapter stream ended before {missing or [self._name]} arrived complete"
            )
        (self._tmp / "manifest.json").write_text(json.dumps(dataclasses.asdict(self.manifest), indent=2))
        final = _inside(
            self.dest_dir, adapter_path(self.dest_dir, self.manifest.run_id, self.manifest.version)
        )
        if final.exists():  # replace an older pull of the same version, keeping the swap short
            old = final.with_name(f".{final.name}-old-{os.getpid()}")
            final.rename(old)
            self._tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self._tmp.rename(final)
        self._tmp = None
        return final

    def abort(self) -> None:
        """Remove the temporary directory after a failure."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
