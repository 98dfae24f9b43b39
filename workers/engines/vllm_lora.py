"""Adapter versions on a vLLM server: stable names, and loads that never serve a stale copy.

A published version is served as ``RUN@vN`` (``AdapterRef.name``). vLLM keys its adapter cache and
prefix cache by an integer id it assigns per *load*; reloading a name in place keeps the id and may
reuse cached blocks computed with the old weights. So a name whose content we cannot vouch for is
unloaded and loaded again (a fresh id), never reloaded in place:

- the name is not loaded (first use, or vLLM restarted): load it;
- it is loaded, and this process loaded it from the same path with the same fingerprint: keep it;
- otherwise (another path, changed files, or loaded by someone else before we started): unload, load.

The fingerprint is the sha256 of the version's ``manifest.json`` (which holds each file's sha256), or of
file names, sizes and mtimes when there is no manifest.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path

from policyopt.core.errors import InvalidArgument
from policyopt.state.adapter_manifest import MANIFEST_FILE
from policyopt.workers.engines.vllm_http import ALREADY_LOADED, VLLMClient

log = logging.getLogger(__name__)

_ADAPTER_NAME = re.compile(r"^(?P<run>[^@/\s]+)@v(?P<version>\d+)$")


def adapter_name(run_id: str, version: int) -> str:
    """The name a version is served under; equal to ``AdapterRef(run_id, version, path).name``."""
    return f"{run_id}@v{version}"


def parse_adapter_name(name: str) -> tuple[str, int] | None:
    """(run_id, version) of a ``RUN@vN`` name; None for names policyopt did not make."""
    match = _ADAPTER_NAME.match(name)
    return (match.group("run"), int(match.group("version"))) if match else None


def fingerprint(path: str | Path) -> str:
    """What identifies the content of an adapter directory (see the module docstring)."""
    path = Path(path)
    manifest = path / MANIFEST_FILE
    digest = hashlib.sha256()
    if manifest.is_file():
        digest.update(manifest.read_bytes())
        return digest.hexdigest()
    for entry in sorted(p for p in path.iterdir() if p.is_file()):
        stat = entry.stat()
        digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


class LoraSlots:
    """The adapters one vLLM endpoint serves, as far as this process loaded them. Thread-safe."""

    def __init__(self, client: VLLMClient) -> None:
        self.client = client
        self._loaded: dict[str, tuple[str, str]] = {}  # name -> (path, fingerprint) we loaded
        self._lock = threading.Lock()

    @property
    def names(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def ensure(self, name: str, path: str | Path, served: dict[str, str] | None = None) -> bool:
        """Make ``name`` serve the adapter in ``path``; True when it was (re)loaded.

        ``served`` is the endpoint's ``loaded_adapters()`` when the caller has it; without it, this
        process's record alone decides (callers retry with ``served`` after a NotFound).
        """
        path = str(path)
        current = (path, fingerprint(path))
        with self._lock:
            known = self._loaded.get(name)
            if known == current and (served is None or served.get(name) == path):
                return False
            present = name in served if served is not None else known is not None
            if present:
                log.info(
                    "%s: reloading %s (content or path changed, or loaded elsewhere)",
                    self.client.base_url,
                    name,
                )
                self.client.unload_lora(name)
            self._load(name, path)
            self._loaded[name] = current
            return True

    def _load(self, name: str, path: str) -> None:
        try:
            self.client.load_lora(name, path)
        except InvalidArgument as exc:
            if ALREADY_LOADED not in str(exc):
                raise
            # Loaded by someone else since we looked: we cannot vouch for that copy.
            self.client.unload_lora(name)
            self.client.load_lora(name, path)
        log.info("%s: loaded %s from %s", self.client.base_url, name, path)

    def unload(self, name: str) -> bool:
        """Unload ``name``; False when the endpoint did not have it."""
        with self._lock:
            self._loaded.pop(name, None)
            removed = self.client.unload_lora(name)
        if removed:
            log.info("%s: unloaded %s", self.client.base_url, name)
        return removed

    def forget(self, name: str | None = None) -> None:
        """Drop our record of ``name`` (all names when None), e.g. after the endpoint restarted."""
        with self._lock:
            if name is None:
                self._loaded.clear()
            else:
                self._loaded.pop(name, None)


__all__ = ["LoraSlots", "adapter_name", "fingerprint", "parse_adapter_name"]
