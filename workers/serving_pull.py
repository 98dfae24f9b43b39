"""Serving sync without shared storage (``serving-sync --pull-to DIR``): versions come over gRPC.

``PullSync`` talks to the policyopt server only, never to Redis or the adapter store. One thread per
followed run reads ``WatchAdapters``, reconnecting with exponential backoff when the server goes away
and resuming after the last version it saw. The main loop pulls each newest version (``PullAdapter``,
sha256-checked by the SDK, written atomically) into ``DIR/RUN/vNNNNNN`` beside vLLM, then the shared
reconciler (``AdapterServing``) loads it from there, probes it and unloads the version it replaces.
After every endpoint has reconciled, local copies that are neither wanted (newest or pinned) nor loaded
are deleted.

A copy already in ``DIR`` whose files match its manifest's digests is used as is, so a restarted
serving-sync downloads nothing it already has. A refused pull (``AdapterIntegrityError``: a digest
mismatch or a partial stream) leaves nothing behind and is never loaded; the previous version stays
served and the pull is retried with backoff.

What it follows: ``run_id`` when given; otherwise every RUNNING run the API key's tenant sees
(``ListRuns``, listed again at every reconcile), like the shared-disk mode's active runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from policyopt.client import Client
from policyopt.client.errors import (
    AdapterIntegrityError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyOptError,
    Unauthenticated,
    Unavailable,
)
from policyopt.client.types import AdapterVersion, RunStatus
from policyopt.core.identifiers import is_run_id
from policyopt.state.adapter_manifest import MANIFEST_FILE
from policyopt.workers.engines.vllm_lora import adapter_name
from policyopt.workers.serving import AdapterServing, Served

log = logging.getLogger(__name__)

WATCH_WINDOW_S = 60.0
"""Deadline of one WatchAdapters call; the watch reopens after it, so a stop is noticed within it."""
BACKOFF_S = (0.5, 30.0)
"""First and longest wait before reconnecting a watch or retrying a refused pull."""
_PERMANENT = (NotFound, PermissionDenied, Unauthenticated, InvalidArgument)


@dataclass
class _Retry:
    version: int
    files: dict[str, str] | None
    due: float
    delay_s: float


def verified_copy(directory: Path, files: dict[str, str] | None = None) -> bool:
    """True when ``directory`` holds a pulled adapter whose files match its manifest's sha256 digests.

    ``files`` (name -> sha256, the server's manifest) must also equal the local manifest's when given.
    """
    try:
        local: dict[str, str] = json.loads((directory / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if files is not None and files != local:
        return False
    for name, digest in local.items():
        try:
            if hashlib.sha256((directory / name).read_bytes()).hexdigest() != digest:
                return False
        except OSError:
            return False
    return True


class PullSync(AdapterServing):
    """Follows versions over gRPC, pulls them into ``pull_to`` and serves them from there; ``run_forever``."""

    def __init__(
        self,
        client: Client,
        pull_to: str | Path,
        urls: Sequence[str],
        *,
        run_id: str | None = None,
        pins: Iterable[str] = (),
        max_loras: int = 0,
        reconcile_interval_s: float = 5.0,
        on_served: Callable[[Served], None] | None = None,
        backoff_s: tuple[float, float] = BACKOFF_S,
        watch_window_s: float = WATCH_WINDOW_S,
        promoted_only: bool = False,
    ) -> None:
        super().__init__(
            pull_to,
            urls,
            run_id=run_id,
            pins=pins,
            max_loras=max_loras,
            reconcile_interval_s=reconcile_interval_s,
            on_served=on_served,
            promoted_only=promoted_only,  # WatchAdapters and ListAdapters with promoted_only
        )
        self.client = client
        self.backoff_s = backoff_s
        self.watch_window_s = watch_window_s
        self.refused: list[tuple[str, int, str]] = []  # (run, version, why) of every refused pull
        self.pulled: list[tuple[str, int]] = []  # versions downloaded (not those found verified in place)
        self.deleted: list[str] = []  # names whose local copy was deleted
        self._arrivals: queue.Queue[AdapterVersion] = queue.Queue()
        self._watchers: dict[str, threading.Thread] = {}
        self._retries: dict[tuple[str, int], _Retry] = {}

    # -- following ---------------------------------------------------------------------------------
    def followed_runs(self) -> list[str]:
        """``run_id``, or every RUNNING run the API key's tenant sees."""
        if self.run_id:
            return [self.run_id]
        return [r.run_id for r in self.client.list_runs() if r.status == RunStatus.RUNNING]

    def follow(self, stop: threading.Event, after: dict[str, int] | None = None) -> None:
        """Start a watch for each followed run not yet watched, after ``after[run]`` when known."""
        try:
            run_ids = self.followed_runs() if after is None else list(after)
        except PolicyOptError as exc:
            log.warning("cannot list runs now, retrying at the next reconcile: %s", exc)
            return
        for run_id in run_ids:
            if run_id not in self._watchers:
                start = (after or {}).get(run_id)
                thread = threading.Thread(
                    target=self._watch, args=(run_id, start, stop), name=f"watch-{run_id}", daemon=True
                )
                self._watchers[run_id] = thread
                thread.start()

    def _watch(self, run_id: str, after: int | None, stop: threading.Event) -> None:
        """Feed the run's versions above ``after`` to ``_arrivals`` until it ends; reconnect with backoff."""
        delay_s = self.backoff_s[0]
        while not stop.is_set():
            try:
                if after is None:  # start at the newest (promoted) version, not at v1
                    info = self.client.get_run(run_id).info
                    after = max(0, (info.promoted_version if self.promoted_only else info.version) - 1)
                watch = self.client.watch_adapters(
                    run_id, after, timeout=self.watch_window_s, promoted_only=self.promoted_only
                )
                for version in watch:
                    self._arrivals.put(version)
                    after = version.version
                    delay_s = self.backoff_s[0]
                log.info("run %s has ended; no longer watching it", run_id)
                return
            except DeadlineExceeded:
                continue  # the window closed: watch again from the last version
            except PolicyOptError as exc:
                if stop.is_set():
                    return
                if isinstance(exc, _PERMANENT):
                    log.error("cannot watch run %s, giving up on it: %s", run_id, exc)
                    return
                log.warning("watching run %s: %s; reconnecting in %.1f s", run_id, exc, delay_s)
                stop.wait(delay_s)
                delay_s = min(2 * delay_s, self.backoff_s[1])

    # -- pulling -----------------------------------------------------------------------------------
    def fetch(self, run_id: str, version: int, files: dict[str, str] | None = None) -> bool:
        """Make ``pull_to/RUN/vNNNNNN`` a verified copy: reuse one in place, else pull it. False if refused."""
        directory = self.adapter_root / run_id / f"v{version:06d}"
        if verified_copy(directory, files):
            return True
        try:
            self.client.pull_adapter(run_id, version, self.adapter_root)
        except PolicyOptError as exc:
            self._refuse(run_id, version, files, exc)
            return False
        self.pulled.append((run_id, version))
        self._retries.pop((run_id, version), None)
        log.info("pulled %s into %s", adapter_name(run_id, version), directory)
        return True

    def _refuse(self, run_id: str, version: int, files: dict[str, str] | None, exc: PolicyOptError) -> None:
        retry = self._retries.get((run_id, version))
        delay_s = min(2 * retry.delay_s, self.backoff_s[1]) if retry else self.backoff_s[0]
        self._retries[(run_id, version)] = _Retry(version, files, time.monotonic() + delay_s, delay_s)
        self.refused.append((run_id, version, str(exc)))
        level = logging.ERROR if isinstance(exc, AdapterIntegrityError) else logging.WARNING
        log.log(
            level,
            "pull of %s refused, not loading it (retry in %.1f s): %s",
            adapter_name(run_id, version),
            delay_s,
            exc,
        )

    def take(self, versions: Iterable[AdapterVersion]) -> list[str]:
        """Pull the newest of each run among ``versions``; the names that became wanted."""
        newest: dict[str, AdapterVersion] = {}
        for v in versions:
            if v.run_id not in newest or v.version > newest[v.run_id].version:
                newest[v.run_id] = v
        fresh = []
        for v in newest.values():
            if v.version > self._newest.get(v.run_id, 0) and self.fetch(v.run_id, v.version, v.files):
                name = self.want(v.run_id, v.version, v.created_at or time.time())
                fresh.extend([name] if name else [])
        return fresh

    def _retry_due(self) -> list[str]:
        """Retry refused pulls whose wait is over, dropping those a newer version has overtaken."""
        fresh = []
        now = time.monotonic()
        for (run_id, version), retry in list(self._retries.items()):
            pinned = (run_id, version) in self.pins
            if not pinned and version <= self._newest.get(run_id, 0):
                del self._retries[(run_id, version)]
            elif retry.due <= now and self.fetch(run_id, version, retry.files) and not pinned:
                name = self.want(run_id, version, time.time())
                fresh.extend([name] if name else [])
        return fresh

    def prune(self) -> None:
        """Delete local copies of managed names that are not wanted (after vLLM has unloaded them)."""
        keep = set(self.wanted())
        for run_dir in sorted(p for p in self.adapter_root.iterdir() if p.is_dir() and is_run_id(p.name)):
            for directory in sorted(run_dir.glob("v[0-9]*")):
                if not directory.name[1:].isdigit():
                    continue
                name = adapter_name(run_dir.name, int(directory.name[1:]))
                if self._manages(name) and name not in keep:
                    shutil.rmtree(directory, ignore_errors=True)
                    self.deleted.append(name)
                    log.info("deleted the local copy of %s (unloaded everywhere)", name)

    def reconcile_and_prune(self) -> None:
        """Reconcile every endpoint; prune only when all answered (else one may still load an old copy)."""
        if self.reconcile():
            self.prune()

    # -- loop --------------------------------------------------------------------------------------
    def bootstrap(self) -> dict[str, int] | None:
        """Fetch the pins and the newest version of each followed run: run -> that version (0: none yet).

        None while the server is unreachable: nothing is reconciled before this succeeds, so a sync
        that starts during a server outage never unloads (or deletes) what the endpoints serve.
        """
        self.adapter_root.mkdir(parents=True, exist_ok=True)
        try:
            versions = {
                run_id: self.client.list_adapters(run_id, self.promoted_only)
                for run_id in self.followed_runs()
            }
        except _PERMANENT:
            raise  # a wrong --run, key or address: say so instead of retrying forever
        except PolicyOptError as exc:
            log.warning("cannot reach the server to start, retrying: %s", exc)
            return None
        for run_id, version in sorted(self.pins):
            self.fetch(run_id, version)
        newest = [max(vs, key=lambda v: v.version) for vs in versions.values() if vs]
        self.take(newest)
        return {run_id: max((v.version for v in vs), default=0) for run_id, vs in versions.items()}

    def sync_once(self) -> None:
        """``--once``: fetch the pins and the newest version of each followed run, reconcile, prune."""
        if self.bootstrap() is None:
            raise Unavailable("the policyopt server is unreachable; check --address")
        self.reconcile_and_prune()

    def step(self, timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for new versions; pull and reconcile when some arrive. New names."""
        try:
            arrived = [self._arrivals.get(timeout=timeout_s)]
        except queue.Empty:
            arrived = []
        while not self._arrivals.empty():
            arrived.append(self._arrivals.get_nowait())
        fresh = self.take(arrived) + self._retry_due()
        if fresh:
            self.reconcile_and_prune()
        return fresh

    def run_forever(self, stop: threading.Event) -> None:
        """Follow, pull and reconcile until ``stop`` is set."""
        delay_s = self.backoff_s[0]
        while (after := self.bootstrap()) is None:
            if stop.wait(delay_s):
                return
            delay_s = min(2 * delay_s, self.backoff_s[1])
        self.follow(stop, after)
        self.reconcile_and_prune()
        next_reconcile = time.monotonic() + self.reconcile_interval_s
        while not stop.is_set():
            self.step(min(1.0, self.reconcile_interval_s))
            if time.monotonic() >= next_reconcile:
                self.follow(stop)
                self.reconcile_and_prune()
                next_reconcile = time.monotonic() + self.reconcile_interval_s


__all__ = ["PullSync", "verified_copy"]
