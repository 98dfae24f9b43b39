"""Building a model directory once across processes: into a temporary directory, then one rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(dest: Path, build: Callable[[Path], object]) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``dest``, once across processes.

    A file lock serializes concurrent callers; the loser of the race finds ``dest`` complete and returns.
    Building into a fresh temporary directory and renaming it means ``dest`` is never half-written.
    """
    from filelock import FileLock

    if is_model_dir(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if is_model_dir(dest):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; other processes (a vLLM server) read it
            if dest.exists():  # a leftover from an interrupted build without config.json
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def is_model_dir(path: Path) -> bool:
    """A directory holding config.json and safetensors weights."""
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


__all__ = ["build_once", "is_model_dir"]
