"""The models tenants may name: declared by the operator, built in, or a path under a declared root.

A run's ``base_model`` and ``teacher.model`` are names, resolved the same way by the server (at
CreateRun) and by the workers (``ModelCatalog.resolve``):

1. a name in ``POLICYOPT_MODELS`` (``name=/path`` or ``name=hf:org/model[@revision]``); a hub id loads
   from the local Hugging Face cache only (``HF_HOME`` / ``HF_HUB_CACHE``), never from the network;
2. the built-in ``tiny`` and ``smollm2``;
3. an absolute path whose real location is under a directory of ``POLICYOPT_MODEL_ROOTS``.

Anything else (``~``, a relative path, a path outside the roots) is PERMISSION_DENIED naming the settings,
before the path is looked at, so a tenant learns nothing about the file system.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from policyopt.core.errors import FailedPrecondition, PermissionDenied
from policyopt.core.settings import Settings
from policyopt.models.resolve import BUILT_IN, resolve_base_model

log = logging.getLogger(__name__)

HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class ModelCatalog:
    """Names -> local model directories under the operator's declarations (see the module docstring)."""

    data_dir: str
    declared: Mapping[str, str] = field(default_factory=dict)
    roots: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        return cls(settings.data_dir, dict(settings.models), tuple(settings.model_roots))

    def resolve(self, name: str) -> Path:
        """The local directory of model ``name``; PermissionDenied when the operator did not allow it."""
        source = self.declared.get(name)
        if source is not None:
            return self._resolve_declared(name, source)
        if name in BUILT_IN:
            return resolve_base_model(name, self.data_dir)
        if self._under_a_root(name):
            return resolve_base_model(name, self.data_dir)
        log.warning("model %r refused: not declared and not under POLICYOPT_MODEL_ROOTS", name)
        names = sorted({*self.declared, *BUILT_IN})
        raise PermissionDenied(
            f"model {name[:200]!r} is not one the operator allows: name one of {names} (POLICYOPT_MODELS), or "
            "an absolute path under a directory of POLICYOPT_MODEL_ROOTS; ask the operator to declare others"
        )

    def _under_a_root(self, name: str) -> bool:
        if not self.roots or not os.path.isabs(name):
            return False
        real = Path(name).resolve()
        return any(real.is_relative_to(Path(root).resolve()) for root in self.roots)

    def _resolve_declared(self, name: str, source: str) -> Path:
        if source.startswith(HUB_PREFIX):
            return _from_hub_cache(name, source[len(HUB_PREFIX) :])
        path = Path(source)
        if not (path / "config.json").exists():
            log.error("POLICYOPT_MODELS declares %s=%s, which has no config.json", name, source)
            raise FailedPrecondition(
                f"model {name!r} is declared in POLICYOPT_MODELS but its directory holds no config.json; "
                "ask the operator to fix the declaration"
            )
        return path


def _hub_cache_dir() -> str | None:
    """The hub cache as the environment names it now (huggingface_hub reads it only at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _from_hub_cache(name: str, hub_id: str) -> Path:
    """The cached snapshot of ``org/model[@revision]``; FailedPrecondition when the cache lacks it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = hub_id.partition("@")
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision or None, local_files_only=True, cache_dir=_hub_cache_dir()
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        log.error(
            "model %s (hf:%s) is not in the Hugging Face cache %s: %s", name, hub_id, _hub_cache_dir(), exc
        )
        raise FailedPrecondition(
            f"model {name!r} (hf:{hub_id}) is not in the service's Hugging Face cache, and the service loads "
            f"hub models offline; ask the operator to run `hf download {repo_id}` with the service's HF_HOME "
            "on every server and worker machine"
        ) from exc
    if not (path / "config.json").exists():
        raise FailedPrecondition(f"model {name!r} (hf:{hub_id}) in the Hugging Face cache has no config.json")
    return path


__all__ = ["HUB_PREFIX", "ModelCatalog"]
