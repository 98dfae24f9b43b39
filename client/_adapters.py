"""Writing a pulled adapter: chunks into a temporary directory, sha256-checked, then one rename.

The result is ``dest_dir/<run_id>/v000002/`` holding the PEFT files and ``manifest.json``.
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
from policyopt.v1 import policyopt_pb2 as pb


def adapter_path(dest_dir: str | os.PathLike[str], run_id: str, version: int) -> Path:
    return Path(dest_dir) / run_id / f"v{version:06d}"


def _safe_name(name: str) -> str:
    if Path(name).name != name or name in ("", ".", "..", "manifest.json"):
        raise AdapterIntegrityError(f"the server sent an unsafe or reserved file name {name!r}")
    return name


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
            self._start(version_from_proto(chunk.manifest))
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
        self.manifest = manifest
        parent = adapter_path(self.dest_dir, manifest.run_id, manifest.version).parent
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
        self._file = (self._tmp / name).open("wb")

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
        final = adapter_path(self.dest_dir, self.manifest.run_id, self.manifest.version)
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
