"""Adapter manifests: ``manifest.json`` beside the adapter files, with the sha256 of each file.

A version directory is complete iff it holds ``manifest.json``; the store writes it last.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from policyopt.core.errors import FailedPrecondition, NotFound
from policyopt.core.types import AdapterManifest, from_json, to_json

MANIFEST_FILE = "manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""The PEFT files every version holds; a publish without them is refused."""

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(directory: str | Path) -> dict[str, str]:
    """file name -> sha256 for the regular files directly inside ``directory`` (the manifest excluded)."""
    directory = Path(directory)
    return {
        p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE
    }


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (the latter makes a rename or a new entry durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: str | Path, manifest: AdapterManifest) -> Path:
    """Write ``manifest.json`` into ``directory`` and fsync it."""
    path = Path(directory) / MANIFEST_FILE
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(to_json(manifest))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_manifest(directory: str | Path) -> AdapterManifest:
    """The manifest of a version directory; NotFound when the directory is missing or incomplete."""
    path = Path(directory) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"{directory} is not a complete adapter version (no {MANIFEST_FILE})") from exc
    return from_json(AdapterManifest, text)


def verify_files(directory: str | Path, manifest: AdapterManifest) -> None:
    """Check that every file the manifest names is present with its sha256; FailedPrecondition if not."""
    directory = Path(directory)
    problems = []
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name} has the wrong sha256")
    if problems:
        raise FailedPrecondition(
            f"adapter {manifest.run_id} v{manifest.version} in {directory} is corrupt: {'; '.join(problems)}"
        )


__all__ = [
    "ADAPTER_FILES",
    "MANIFEST_FILE",
    "fsync_path",
    "hash_files",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]
