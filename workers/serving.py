"""Serving sync: keep vLLM endpoints on the newest adapter version of each run, plus pinned ones.

It follows ``po:adapters:published`` (``RunStore.read_published``). For each publication it loads
``RUN@vN`` from ``adapter_root/RUN/vNNNNNN`` on every endpoint, sends one probe completion with the new
name, reports the publish-to-served latency (publication stream id time -> first successful completion)
as a log line and the ``policyopt.serving.publish_to_served`` histogram, then unloads the names it
manages that are no longer wanted. Loading before unloading means product traffic never finds neither.

Every ``reconcile_interval_s`` it compares each endpoint's ``/v1/models`` with the wanted set and
repairs the difference, so a restarted vLLM gets its adapters back without anyone noticing.

With ``promoted_only`` it follows ``po:adapters:promoted`` instead: a version is served once the run's
promotion rule promotes it (``state/evals.py``), and at startup the newest promoted version is wanted.

Managed names are policyopt's ``RUN@vN`` names (of ``run_id`` only, when given); other adapters on the
endpoint are left alone. At startup the wanted set is the newest version of ``run_id``, or of every
active run; later publications of any run (or of ``run_id``) join it.

``AdapterServing`` is that reconciler; ``ServingSync`` feeds it from Redis and the shared adapter store.
``policyopt.workers.serving_pull.PullSync`` (``--pull-to``) feeds it over gRPC instead, from local copies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from opentelemetry import metrics

from policyopt.core.errors import InvalidArgument, NotFound, PolicyOptError
from policyopt.state.adapter_manifest import MANIFEST_FILE
from policyopt.state.evals import PROMOTED_STREAM, EvalStore
from policyopt.state.runs import PUBLISHED_STREAM, RunStore
from policyopt.workers.engines.vllm_http import VLLMClient
from policyopt.workers.engines.vllm_lora import LoraSlots, adapter_name, parse_adapter_name

log = logging.getLogger(__name__)

PROBE_PROMPT = "Hello"
LATENCY_METRIC = "policyopt.serving.publish_to_served"


@dataclass(frozen=True)
class Served:
    """A newly published version answered its first completion on one endpoint."""

    url: str
    name: str
    published_at: float  # unix seconds of the publication (its stream id)
    served_at: float  # unix seconds of the first successful completion

    @property
    def latency_s(self) -> float:
        return self.served_at - self.published_at


def parse_pin(pin: str, run_id: str | None) -> tuple[str, int]:
    """``RUN@vN``, or a bare version ``N`` / ``vN`` of ``run_id``."""
    parsed = parse_adapter_name(pin)
    if parsed:
        return parsed
    text = pin[1:] if pin.startswith("v") else pin
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"pin {pin!r} must be a version number (with --run) or RUN@vN")
    if not run_id:
        raise InvalidArgument(f"pin {pin!r} is a bare version: give --run RUN, or pin RUN@v{text}")
    return run_id, int(text)


class AdapterServing:
    """The reconciler both modes share: the wanted set, and load/probe/unload on every endpoint.

    Versions live in ``adapter_root/RUN/vNNNNNN`` (the adapter store, or ``--pull-to``'s local copies);
    subclasses say which versions are wanted by calling ``want``.
    """

    def __init__(
        self,
        adapter_root: str | Path,
        urls: Sequence[str],
        *,
        run_id: str | None = None,
        pins: Iterable[str] = (),
        max_loras: int = 0,
        reconcile_interval_s: float = 5.0,
        on_served: Callable[[Served], None] | None = None,
        promoted_only: bool = False,
    ) -> None:
        if not urls:
            raise InvalidArgument("serving sync needs at least one --vllm URL")
        self.adapter_root = Path(adapter_root)
        self.run_id = run_id
        self.pins = {parse_pin(p, run_id) for p in pins}
        self.max_loras = max_loras
        self.reconcile_interval_s = reconcile_interval_s
        self.on_served = on_served
        self.promoted_only = promoted_only  # follow versions once promoted, not once published
        self.slots = {u.rstrip("/"): LoraSlots(VLLMClient(u, timeout_s=120.0)) for u in urls}
        self.served: list[Served] = []
        self._newest: dict[str, int] = {}
        self._published_at: dict[str, float] = {}  # name -> publication time
        self._unprobed: set[tuple[str, str]] = set()  # (url, name) of new versions not yet served there
        self._histogram = _latency_histogram()

    # -- wanted state ------------------------------------------------------------------------------------
    def want(self, run_id: str, version: int, published_at: float) -> str | None:
        """Make ``version`` the wanted one of ``run_id`` when it is newer; its name then, else None."""
        if (self.run_id and run_id != self.run_id) or version <= self._newest.get(run_id, 0):
            return None
        self._newest[run_id] = version
        name = adapter_name(run_id, version)
        self._published_at[name] = published_at
        self._unprobed.update((url, name) for url in self.slots)
        return name

    def wanted(self) -> dict[str, Path]:
        """name -> adapter directory: pins first, then the newest of each run, most recent first."""
        newest = sorted(self._newest.items(), key=lambda rv: -self._published_at.get(adapter_name(*rv), 0.0))
        ordered = list(dict.fromkeys([*sorted(self.pins), *newest]))
        if self.max_loras and len(ordered) > self.max_loras:
            log.warning(
                "%d versions wanted but max_loras is %d; serving the first", len(ordered), self.max_loras
            )
            ordered = ordered[: self.max_loras]
        return {adapter_name(run, v): self.adapter_root / run / f"v{v:06d}" for run, v in ordered}

    def _manages(self, name: str) -> bool:
        parsed = parse_adapter_name(name)
        return parsed is not None and (self.run_id is None or parsed[0] == self.run_id)

    # -- reconcile -------------------------------------------------------------------------------------
    def reconcile(self) -> bool:
        """Make every endpoint serve exactly the wanted managed names (others untouched).

        True when every endpoint answered: then no managed name outside ``wanted()`` is loaded anywhere.
        """
        wanted = self.wanted()
        reached_all = True
        for url, slot in self.slots.items():
            try:
                self._reconcile_endpoint(url, slot, wanted)
            except PolicyOptError as exc:
                reached_all = False
                log.warning(
                    "%s: cannot reconcile now, retrying in %.0f s: %s", url, self.reconcile_interval_s, exc
                )
                slot.forget()  # it may be restarting: trust nothing we loaded before
        self._unprobed = {(url, name) for url, name in self._unprobed if name in wanted}
        self._published_at = {name: t for name, t in self._published_at.items() if name in wanted}
        return reached_all

    def _reconcile_endpoint(self, url: str, slot: LoraSlots, wanted: dict[str, Path]) -> None:
        served = slot.client.loaded_adapters()
        for name, path in wanted.items():
            if not (path / MANIFEST_FILE).is_file():
                log.warning("%s: %s is not at %s (yet); skipping", url, name, path)
                continue
            slot.ensure(name, path, served=served)
            if (url, name) in self._unprobed:
                self._probe(url, slot, name)
        for name in served:
            if self._manages(name) and name not in wanted:
                slot.unload(name)

    def _probe(self, url: str, slot: LoraSlots, name: str) -> None:
        """One tiny completion with the new name; its success is the moment the version is served."""
        slot.client.completions({"model": name, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0.0})
        record = Served(url=url, name=name, published_at=self._published_at[name], served_at=time.time())
        self._unprobed.discard((url, name))
        self.served.append(record)
        self._histogram.record(record.latency_s, {"endpoint": url})
        log.info("%s: serving %s, publish-to-served %.3f s", url, name, record.latency_s)
        if self.on_served is not None:
            self.on_served(record)


class ServingSync(AdapterServing):
    """Follows ``po:adapters:published`` in Redis and serves from the shared adapter store; ``run_forever``."""

    def __init__(
        self,
        r: redis.Redis,
        adapter_root: str | Path,
        urls: Sequence[str],
        *,
        run_id: str | None = None,
        pins: Iterable[str] = (),
        max_loras: int = 0,
        reconcile_interval_s: float = 5.0,
        on_served: Callable[[Served], None] | None = None,
        promoted_only: bool = False,
    ) -> None:
        super().__init__(
            adapter_root,
            urls,
            run_id=run_id,
            pins=pins,
            max_loras=max_loras,
            reconcile_interval_s=reconcile_interval_s,
            on_served=on_served,
            promoted_only=promoted_only,  # follows po:adapters:promoted (``state/evals.py``)
        )
        self.runs = RunStore(r)
        self.r = r
        self._cursor = "0-0"
        self.evals = EvalStore(r)

    def bootstrap(self) -> None:
        """Start after the stream's current end, wanting the newest version of the watched runs."""
        stream = PROMOTED_STREAM if self.promoted_only else PUBLISHED_STREAM
        last: list[tuple[bytes, dict[bytes, bytes]]] = self.r.xrevrange(stream, count=1)  # type: ignore[assignment]
        self._cursor = last[0][0].decode() if last else "0-0"
        for run_id in [self.run_id] if self.run_id else self.runs.active_run_ids():
            try:
                version = self.runs.get_run(run_id).version
                if self.promoted_only:
                    version = max(0, self.evals.promotion_state(run_id).promoted)
            except NotFound:
                log.warning("run %s does not exist (yet); waiting for its first publication", run_id)
                continue
            if version:
                self._newest[run_id] = max(version, self._newest.get(run_id, 0))

    def observe(self, publications: Iterable[tuple[str, str, int]]) -> list[str]:
        """Fold publications (stream id, run, version) into the wanted set; names that became newest."""
        fresh = []
        for stream_id, run_id, version in publications:
            self._cursor = stream_id
            name = self.want(run_id, version, int(stream_id.split("-")[0]) / 1000.0)
            if name:
                fresh.append(name)
        return fresh

    # -- loop ------------------------------------------------------------------------------------------
    def step(self, block_ms: int) -> list[str]:
        """Wait up to ``block_ms`` for publications; reconcile when some arrive. Returns the new names."""
        read = self.evals.read_promoted if self.promoted_only else self.runs.read_published
        fresh = self.observe(read(self._cursor, block_ms=block_ms))
        if fresh:
            self.reconcile()
        return fresh

    def run_forever(self, stop: threading.Event) -> None:
        """Follow publications and reconcile periodically until ``stop`` is set."""
        self.bootstrap()
        self.reconcile()
        next_reconcile = time.monotonic() + self.reconcile_interval_s
        while not stop.is_set():
            block_ms = max(1, int(min(1.0, self.reconcile_interval_s) * 1000))
            try:
                self.step(block_ms)
            except redis.RedisError as exc:
                log.warning("Redis error, retrying: %s", exc)
                stop.wait(1.0)
            if time.monotonic() >= next_reconcile:
                self.reconcile()
                next_reconcile = time.monotonic() + self.reconcile_interval_s


def _latency_histogram() -> metrics.Histogram:
    return metrics.get_meter("policyopt").create_histogram(
        LATENCY_METRIC,
        unit="s",
        description="publication of an adapter version to its first served completion",
    )


__all__ = ["LATENCY_METRIC", "AdapterServing", "Served", "ServingSync", "parse_pin"]
