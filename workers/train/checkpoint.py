"""Trainer state (optimizer, any critic) beside the adapter store, so a restart resumes exactly.

Layout: ``data_dir/checkpoints/run_id/v000003/trainer_state.pt``. The state of version N is written
before adapter N is published, so every published version has one; the last ``keep`` are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from policyopt.state.adapter_manifest import fsync_path

STATE_FILE = "trainer_state.pt"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")

TrainerState = dict[str, object]


class CheckpointStore:
    """One ``trainer_state.pt`` per version and run, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def path(self, run_id: str, version: int) -> Path:
        return self.root / run_id / f"v{version:06d}" / STATE_FILE

    def save(self, run_id: str, version: int, state: TrainerState) -> Path:
        """Write the state of ``version`` and drop checkpoints older than the last ``keep``."""
        path = self.path(run_id, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
        self._prune(run_id, version)
        return path

    def load(self, run_id: str, version: int) -> TrainerState | None:
        """The state saved for ``version``, or None when there is none."""
        path = self.path(run_id, version)
        if not path.is_file():
            return None
        state: TrainerState = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def versions(self, run_id: str) -> list[int]:
        run_dir = self.root / run_id
        if not run_dir.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in run_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _prune(self, run_id: str, newest: int) -> None:
        # Versions above ``newest`` are stale leftovers of a step that crashed before its publish.
        stale = [v for v in self.versions(run_id) if v > newest]
        older = [v for v in self.versions(run_id) if v <= newest][: -self.keep]
        for version in stale + older:
            shutil.rmtree(self.root / run_id / f"v{version:06d}", ignore_errors=True)

    def remove_version(self, run_id: str, version: int) -> None:
        shutil.rmtree(self.root / run_id / f"v{version:06d}", ignore_errors=True)

    def remove_run(self, run_id: str) -> None:
        shutil.rmtree(self.root / run_id, ignore_errors=True)


__all__ = ["STATE_FILE", "CheckpointStore", "TrainerState"]
