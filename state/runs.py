"""Run state, reward endpoints, run events and the adapter index, in Redis.

Keys (all prefixed ``po:``):
- ``po:run:{id}`` hash: ``data`` (Run as JSON) plus counters ``version``, ``step``, ``prompts``, ``groups``
- ``po:tenant:{tenant}:runs`` set of run ids; ``po:runs:active`` set of running run ids
- ``po:tenant:{tenant}:endpoints`` hash name -> endpoint JSON
- ``po:run:{id}:events`` stream of RunEvent JSON
- ``po:run:{id}:adapters`` hash version -> AdapterManifest JSON; ``po:adapters:published`` stream of
  (run_id, version) for serving sync and WatchAdapters
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace

import redis

from policyopt.core.errors import FailedPrecondition, NotFound
from policyopt.core.identifiers import quote
from policyopt.core.types import (
    AdapterManifest,
    EvalPrompt,
    EventKind,
    RewardEndpointInfo,
    Run,
    RunConfig,
    RunEvent,
    RunStatus,
    from_json,
    to_json,
)
from policyopt.state.connection import stream_entries, text
from policyopt.state.evals import EvalStore, EvalTask
from policyopt.state.queue import WorkQueue

PUBLISHED_STREAM = "po:adapters:published"
EVENTS_MAXLEN = 10000


def groups_ahead(config: RunConfig) -> int:
    """How many of a run's groups may wait for its trainer (queued, or sampled and being scored).

    Rollout workers pass over a run with that many (``prompt_scripts.CLAIM``): groups further ahead would be
    older than ``max_staleness`` allows by the time the trainer reached them, and be sampled again. Twice the
    groups of the steps a rollout may lag by leaves room for filtered and resampled groups.
    """
    return 2 * (config.max_staleness + 1) * config.prompts_per_step


def _run_key(run_id: str) -> str:
    return f"po:run:{run_id}"


def _events_key(run_id: str) -> str:
    return f"po:run:{run_id}:events"


def _adapters_key(run_id: str) -> str:
    return f"po:run:{run_id}:adapters"


class RunStore:
    def __init__(self, r: redis.Redis):
        self.r = r

    # -- reward endpoints --------------------------------------------------------------------------
    def register_endpoint(self, tenant: str, endpoint: RewardEndpointInfo) -> RewardEndpointInfo:
        self.r.hset(f"po:tenant:{tenant}:endpoints", endpoint.name, to_json(endpoint))
        return endpoint

    def get_endpoint(self, tenant: str, name: str) -> RewardEndpointInfo:
        raw = self.r.hget(f"po:tenant:{tenant}:endpoints", name)
        if raw is None:
            known = sorted(text(n) for n in self.r.hkeys(f"po:tenant:{tenant}:endpoints"))
            raise NotFound(
                f"reward endpoint {quote(name)} is not registered; register it with RegisterRewardEndpoint "
                f"(registered: {known or 'none'})"
            )
        return from_json(RewardEndpointInfo, raw)

    def list_endpoints(self, tenant: str) -> list[RewardEndpointInfo]:
        rows = self.r.hgetall(f"po:tenant:{tenant}:endpoints")
        return sorted((from_json(RewardEndpointInfo, v) for v in rows.values()), key=lambda e: e.name)

    # -- runs ----------------------------------------------------------------------------------------
    @staticmethod
    def new_run_id() -> str:
        return f"run-{uuid.uuid4().hex[:12]}"

    def create_run(
        self,
        tenant: str,
        config: RunConfig,
        *,
        run_id: str = "",
        version_zero: AdapterManifest | None = None,
        eval_prompts: Sequence[EvalPrompt] = (),
    ) -> Run:
        """Create a run in one MULTI with its STATUS event, ``version_zero`` (a warm start's published
        adapter) in its index, and ``eval_prompts`` with version 0's evaluation queued (``EvalStore.start``):
        a crash leaves the whole run or none of it."""
        run = Run(run_id=run_id or self.new_run_id(), tenant=tenant, config=config)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            _run_key(run.run_id),
            mapping={
                "data": to_json(run),
                "version": 0,
                "step": 0,
                "prompts": 0,
                "groups": 0,
                "ahead": groups_ahead(config),
            },
        )
        pipe.sadd(f"po:tenant:{tenant}:runs", run.run_id)
        pipe.sadd("po:runs:active", run.run_id)
        self.add_event(RunEvent(run_id=run.run_id, kind=EventKind.STATUS, message="running"), pipe)
        if version_zero is not None:
            pipe.hset(_adapters_key(run.run_id), "0", to_json(version_zero))
        EvalStore(self.r).start(run.run_id, eval_prompts, config.eval.every, pipe)
        pipe.execute()
        return run

    def get_run(self, run_id: str, tenant: str | None = None) -> Run:
        """The run; NotFound when it does not exist or belongs to another tenant (no existence leak)."""
        row = self.r.hgetall(_run_key(run_id)) if run_id else {}
        if b"data" not in row:  # also a key of another type or shape: never say what else exists
            raise NotFound(f"run {quote(run_id)} does not exist; list your runs with ListRuns")
        run = from_json(Run, row[b"data"])
        if tenant is not None and run.tenant != tenant:
            raise NotFound(f"run {quote(run_id)} does not exist; list your runs with ListRuns")
        return replace(
            run,
            version=int(row.get(b"version", 0)),
            step=int(row.get(b"step", 0)),
            prompts_submitted=int(row.get(b"prompts", 0)),
            groups_trained=int(row.get(b"groups", 0)),
        )

    def list_runs(self, tenant: str) -> list[Run]:
        ids = sorted(text(i) for i in self.r.smembers(f"po:tenant:{tenant}:runs"))
        runs = [self.get_run(i) for i in ids]
        return sorted(runs, key=lambda r: r.created_at)

    def active_run_ids(self) -> list[str]:
        return sorted(text(i) for i in self.r.smembers("po:runs:active"))

    def running_run_ids(self, tenant: str) -> list[str]:
        """The tenant's RUNNING runs (for its limits on active runs and queued prompts)."""
        return sorted(text(i) for i in self.r.sinter([f"po:tenant:{tenant}:runs", "po:runs:active"]))

    def set_status(self, run_id: str, status: RunStatus, error: str = "") -> Run:
        run = self.get_run(run_id)
        if run.status != RunStatus.RUNNING and status != run.status:
            raise FailedPrecondition(f"run {run_id} is already {run.status.value}")
        pipe = self.r.pipeline(transaction=True)  # one MULTI: whoever sees the status sees its STATUS event
        run = self.write_status(pipe, run, status, error)
        pipe.execute()
        return run

    def write_status(self, pipe: redis.client.Pipeline, run: Run, status: RunStatus, error: str = "") -> Run:
        """Queue ``run``'s new status and its STATUS event in ``pipe``'s MULTI; returns the changed run."""
        run = replace(run, status=status, error=error or run.error)
        pipe.hset(_run_key(run.run_id), "data", to_json(run))
        if status != RunStatus.RUNNING:
            pipe.srem("po:runs:active", run.run_id)
        message = status.value + (f": {error}" if error else "")
        self.add_event(RunEvent(run_id=run.run_id, kind=EventKind.STATUS, message=message), pipe)
        return run

    # -- events --------------------------------------------------------------------------------------
    def add_event(self, event: RunEvent, pipe: redis.client.Pipeline | None = None) -> None:
        target = pipe if pipe is not None else self.r
        target.xadd(
            _events_key(event.run_id), {"data": to_json(event)}, maxlen=EVENTS_MAXLEN, approximate=True
        )

    def read_events(
        self, run_id: str, after_id: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[RunEvent]:
        reply = self.r.xread({_events_key(run_id): after_id or "0"}, count=count, block=block_ms)
        return [
            replace(from_json(RunEvent, f[b"data"]), event_id=text(mid)) for mid, f in stream_entries(reply)
        ]

    # -- adapters ------------------------------------------------------------------------------------
    def commit_step(
        self,
        queue: WorkQueue,
        manifest: AdapterManifest,
        group_message_ids: Iterable[str],
        events: Iterable[RunEvent] = (),
        guard: tuple[str, str] | None = None,
        evaluation: EvalTask | None = None,
    ) -> None:
        """Make a published version visible and ack the groups it trained on, atomically; ``evaluation``
        (the version's, when due) is queued in the same transaction, so no commit goes unevaluated.

        ``guard`` is (key, value), the trainer's lease: the commit happens only while the key still
        holds that value (checked under WATCH), else FailedPrecondition and nothing is written.
        """
        ids, extra = list(group_message_ids), list(events)
        for _attempt in range(5):
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    if guard is not None:
                        pipe.watch(guard[0])
                        if pipe.get(guard[0]) != guard[1].encode():
                            raise FailedPrecondition(
                                f"run {manifest.run_id}: this trainer lost its lease; version {manifest.version} "
                                "is left for the lease holder to commit"
                            )
                        pipe.multi()
                    self._queue_commit(pipe, queue, manifest, ids, extra)
                    if evaluation is not None:
                        EvalStore(self.r).enqueue(evaluation, pipe)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # the lease was renewed (or taken) between WATCH and EXEC: check again
        raise FailedPrecondition(
            f"run {manifest.run_id}: the lease kept changing during the commit of v{manifest.version}"
        )

    def _queue_commit(
        self,
        pipe: redis.client.Pipeline,
        queue: WorkQueue,
        manifest: AdapterManifest,
        ids: list[str],
        events: list[RunEvent],
    ) -> None:
        key = _run_key(manifest.run_id)
        pipe.hset(_adapters_key(manifest.run_id), str(manifest.version), to_json(manifest))
        pipe.hset(key, mapping={"version": manifest.version, "step": manifest.step})
        pipe.hincrby(key, "groups", len(manifest.group_ids or ids))  # trained, not filtered-out
        queue.ack_groups(pipe, manifest.run_id, ids)
        step_event = RunEvent(
            run_id=manifest.run_id,
            kind=EventKind.STEP,
            step=manifest.step,
            version=manifest.version,
            metrics=manifest.metrics,
            message=f"step {manifest.step}",
        )
        version_event = RunEvent(
            run_id=manifest.run_id,
            kind=EventKind.VERSION,
            step=manifest.step,
            version=manifest.version,
            message=f"adapter version {manifest.version} published",
        )
        for event in [step_event, *events, version_event]:
            self.add_event(event, pipe)
        pipe.xadd(
            PUBLISHED_STREAM,
            {"run_id": manifest.run_id, "version": manifest.version},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    def unindex_versions(self, run_id: str, versions: Iterable[int]) -> None:
        """Drop versions from the run's adapter index (retention deletes their files afterwards)."""
        names = [str(v) for v in versions]
        if names:
            self.r.hdel(_adapters_key(run_id), *names)

    def list_versions(self, run_id: str) -> list[AdapterManifest]:
        rows = self.r.hgetall(_adapters_key(run_id))
        return sorted((from_json(AdapterManifest, v) for v in rows.values()), key=lambda m: m.version)

    def get_version(self, run_id: str, version: int | str) -> AdapterManifest:
        """A version number (0: a warm-started or forked run's first adapter), or "latest"; NotFound names
        the versions that exist."""
        if version in ("latest", ""):
            latest = int(self.r.hget(_run_key(run_id), "version") or 0)
            if latest == 0:
                raise NotFound(f"run {run_id} has no adapter version yet; wait for the first step (WatchRun)")
            version = latest
        raw = self.r.hget(_adapters_key(run_id), str(version))
        if raw is None and version == 0:
            raise NotFound(
                f"run {run_id} has no adapter version 0: it started from its base model (no init_adapter), so "
                "its version 0 is the base model itself; load base_model, or pull version 1 or later"
            )
        if raw is None:
            known = sorted(int(v) for v in self.r.hkeys(_adapters_key(run_id)))
            raise NotFound(f"run {run_id} has no adapter version {version}; versions: {known or 'none yet'}")
        return from_json(AdapterManifest, raw)

    def read_published(self, after_id: str = "$", block_ms: int | None = None) -> list[tuple[str, str, int]]:
        """(stream id, run_id, version) of publications after ``after_id``."""
        reply = self.r.xread({PUBLISHED_STREAM: after_id}, count=100, block=block_ms)
        return [(text(mid), text(f[b"run_id"]), int(f[b"version"])) for mid, f in stream_entries(reply)]

    def record_error(self, run_id: str, message: str) -> None:
        self.add_event(RunEvent(run_id=run_id, kind=EventKind.ERROR, message=message))


__all__ = ["PUBLISHED_STREAM", "RunStore"]
