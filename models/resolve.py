"""A run's ``base_model`` (or ``teacher.model``) as a local model directory: a path, ``tiny`` or ``smollm2``."""

from __future__ import annotations

import json
from pathlib import Path

from policyopt.core.errors import InvalidArgument
from policyopt.models.build import build_once
from policyopt.models.smollm2 import convert_smollm2
from policyopt.models.tiny import build_tiny_model

BUILT_IN = ("tiny", "smollm2")


def resolve_base_model(name: str, data_dir: str | Path) -> Path:
    """Map a run's ``base_model`` to a local model directory, building or converting it if needed.

    Any readable path is accepted: this is for trusted callers (the demo, benchmarks). Tenants' names go
    through ``ModelCatalog.resolve``, which applies the operator's declarations first.
    """
    if name == "tiny":
        return build_once(Path(data_dir) / "models" / "tiny", build_tiny_model)
    if name == "smollm2":
        return convert_smollm2(Path(data_dir) / "models" / "smollm2")
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise InvalidArgument(
            f"base_model {name!r} is not a model directory with config.json readable by the service; "
            "give a local path, 'tiny' or 'smollm2'"
        )
    return path


def context_length(model_dir: str | Path) -> int:
    """The model's maximum positions, from config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def vocab_size(model_dir: str | Path) -> int:
    """Rows of the model's embedding (``vocab_size`` in config.json, or its text config's)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 0)


__all__ = ["BUILT_IN", "context_length", "resolve_base_model", "vocab_size"]
