"""Held-out evaluation and promotion state in Redis: eval prompts, the eval queue, results, promoted marks.

Keys (all prefixed ``po:``):
- ``po:run:{id}:eval:prompts`` list of EvalPrompt JSON (CreateRun's ``eval.prompts`` + AddEvalPrompts)
- ``po:evals:tasks`` stream of EvalTask JSON (group ``rollout``): a (run, version) evaluation and the next
  prompt to sample. A rollout worker claims the oldest task, samples one chunk of its prompts, then in one
  MULTI records the chunk's rewards, queues the rest as a new task at the tail and acks (and deletes) the
  claimed one; so the evaluations of several runs take turns, none holds a worker for longer than one
  chunk, and a worker that dies mid-chunk leaves its task pending: after ``claim_idle_ms`` another worker
  takes it over (XAUTOCLAIM). A task is in the stream from its enqueue until its last chunk is recorded.
- ``po:evals:delayed`` sorted set of tasks waiting for a retry (a transient reward failure), scored by when
  they are due; moved back into the stream (one script) when due
- ``po:run:{id}:eval:v{N}`` hash prompt index -> JSON list of rewards, filled chunk by chunk
- ``po:run:{id}:promotion`` hash: ``base`` (version 0's eval mean), ``best`` and ``best_version`` (best
  eval mean so far), ``promoted_best`` (best promoted mean), ``promoted`` (newest promoted version),
  ``since_best`` (evaluations since a new best; ``patience`` counts these); read under WATCH and rewritten
  in the MULTI that records an evaluation's outcome (``finish``)
- ``po:adapters:promoted`` stream of (run_id, version): the wake-up of WatchAdapters(promoted_only)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import redis
from redis.typing import EncodableT, FieldT

from policyopt.core.errors import ResourceExhausted
from policyopt.core.types import (
    AdapterManifest,
    EvalPrompt,
    EventKind,
    RunEvent,
    RunStatus,
    from_json,
    to_json,
)
from policyopt.state.connection import StreamEntries, autoclaim, ensure_group, stream_entries, text

if TYPE_CHECKING:  # runs.py imports this module
    from policyopt.state.runs import RunStore

EVAL_TASKS = "po:evals:tasks"
EVAL_GROUP = "rollout"
DELAYED_EVALS = "po:evals:delayed"
PROMOTED_STREAM = "po:adapters:promoted"
_STREAM_MAXLEN = 10000

# Moves due delayed tasks (member "<uuid> <EvalTask JSON>") into the tasks stream, atomically.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local space = string.find(member, ' ', 1, true)
  redis.call('XADD', KEYS[2], '*', 'data', string.sub(member, space + 1))
end
return #due
"""


def _prompts_key(run_id: str) -> str:
    return f"po:run:{run_id}:eval:prompts"


def _results_key(run_id: str, version: int) -> str:
    return f"po:run:{run_id}:eval:v{version}"


def _promotion_key(run_id: str) -> str:
    return f"po:run:{run_id}:promotion"


@dataclass(frozen=True)
class EvalTask:
    """The evaluation of one version of a run; ``next_prompt`` is the first prompt not yet sampled."""

    run_id: str
    version: int
    next_prompt: int = 0
    reward_attempts: int = 0
    """Failed attempts at this chunk whose reward call failed transiently (``workers/rollout/retry.py``)."""


@dataclass(frozen=True)
class ClaimedEval:
    """A task a worker holds: ``message_id`` in ``po:evals:tasks`` stays pending until it is acked."""

    message_id: str
    task: EvalTask


@dataclass(frozen=True)
class PromotionState:
    """What the promotion rule compares against (see the module docstring for each field)."""

    base: float | None = None
    best: float | None = None
    best_version: int = -1
    promoted_best: float | None = None
    promoted: int = -1
    since_best: int = 0


@dataclass(frozen=True)
class PromotionDecision:
    """What an evaluation changes: the new state, whether the version is promoted, why the run ends."""

    state: PromotionState
    promoted: bool
    stop_reason: str = ""


PromotionRule = Callable[[PromotionState], PromotionDecision]
"""The run's rule applied to one version's eval (``workers/promotion.decide`` with its config and mean)."""


class EvalStore:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._move_due = r.register_script(_MOVE_DUE)

    # -- prompts ----------------------------------------------------------------------------------------
    def add_prompts(
        self, run_id: str, prompts: Sequence[EvalPrompt], limit: int, baseline: bool = False
    ) -> int:
        """Append ``prompts``; ResourceExhausted (nothing added) when the run would hold more than ``limit``.

        ``baseline``: when these are the run's first eval prompts, queue version 0's evaluation in the same
        MULTI (a run created without eval prompts gets its baseline when they arrive)."""
        key = _prompts_key(run_id)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    held = int(pipe.llen(key))
                    if held + len(prompts) > limit:
                        raise ResourceExhausted(
                            f"run {run_id} holds {held} eval prompts and {len(prompts)} more would pass the "
                            f"limit of {limit} (the server's POLICYOPT_MAX_EVAL_PROMPTS); evaluate on a "
                            "smaller held-out set"
                        )
                    pipe.multi()
                    if prompts:
                        pipe.rpush(key, *[to_json(p) for p in prompts])
                        if baseline and held == 0:
                            self.enqueue(EvalTask(run_id, 0), pipe)
                    pipe.execute()
                    return held + len(prompts)
                except redis.WatchError:
                    continue

    def start(
        self, run_id: str, prompts: Sequence[EvalPrompt], every: int, pipe: redis.client.Pipeline
    ) -> None:
        """A new run's eval prompts, and version 0's evaluation when it evaluates (``every`` > 0), in ``pipe``'s
        MULTI (``RunStore.create_run``); the caller has checked the prompts against the limit."""
        if prompts:
            pipe.rpush(_prompts_key(run_id), *[to_json(p) for p in prompts])
            if every > 0:
                self.enqueue(EvalTask(run_id, 0), pipe)

    def prompt_count(self, run_id: str) -> int:
        return int(self.r.llen(_prompts_key(run_id)))

    def summaries(self, run_ids: Sequence[str]) -> list[tuple[int, int]]:
        """(eval prompts held, newest promoted version or -1) of each run, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.llen(_prompts_key(run_id))
            pipe.hget(_promotion_key(run_id), "promoted")
        replies = pipe.execute()
        return [
            (int(count), int(promoted) if promoted is not None else -1)
            for count, promoted in zip(replies[::2], replies[1::2], strict=True)
        ]

    def prompts(self, run_id: str) -> list[EvalPrompt]:
        return [from_json(EvalPrompt, raw) for raw in self.r.lrange(_prompts_key(run_id), 0, -1)]

    # -- the queue ----------------------------------------------------------------------------------------
    def enqueue(self, task: EvalTask, pipe: redis.client.Pipeline | None = None) -> None:
        """Queue ``task`` at the tail (behind the other runs' evaluations); with ``pipe``, in its MULTI."""
        (pipe if pipe is not None else self.r).xadd(EVAL_TASKS, {"data": to_json(task)})

    def claim(self, consumer: str, claim_idle_ms: int) -> ClaimedEval | None:
        """The task a dead worker held for ``claim_idle_ms``, else the oldest queued one; None when none is.

        Due delayed tasks are moved back first. The task stays pending until ``advance``, ``delay``,
        ``ack`` or ``finish`` acks it; ``touch`` keeps it from being taken over meanwhile."""
        self.move_due()
        ensure_group(self.r, EVAL_TASKS, EVAL_GROUP)
        entries = autoclaim(self.r, EVAL_TASKS, EVAL_GROUP, consumer, claim_idle_ms, 1)
        if not entries:
            entries = stream_entries(self.r.xreadgroup(EVAL_GROUP, consumer, {EVAL_TASKS: ">"}, count=1))
        for message_id, fields in entries:
            return ClaimedEval(text(message_id), from_json(EvalTask, fields[b"data"]))
        return None

    def touch(self, consumer: str, claimed: ClaimedEval) -> None:
        """Reset the claimed task's idle time (it is still being worked on)."""
        self.r.xclaim(EVAL_TASKS, EVAL_GROUP, consumer, min_idle_time=0, message_ids=[claimed.message_id],
                      justid=True)  # fmt: skip

    def ack(self, claimed: ClaimedEval, pipe: redis.client.Pipeline | None = None) -> None:
        """The claimed task is done with (finished, dropped, or replaced by another); with ``pipe``, in it."""
        target = pipe if pipe is not None else self.r.pipeline(transaction=True)
        target.xack(EVAL_TASKS, EVAL_GROUP, claimed.message_id)
        target.xdel(EVAL_TASKS, claimed.message_id)
        if pipe is None:
            target.execute()

    def advance(
        self, claimed: ClaimedEval, rewards: Sequence[Sequence[float]], following: EvalTask | None
    ) -> None:
        """Record a chunk's rewards (one list per prompt from ``next_prompt`` on), queue ``following`` (the
        rest of the evaluation) and ack the claimed task, in one MULTI."""
        pipe = self.r.pipeline(transaction=True)
        self.record_rewards(claimed.task, rewards, pipe)
        if following is not None:
            self.enqueue(following, pipe)
        self.ack(claimed, pipe)
        pipe.execute()

    def delay(self, claimed: ClaimedEval, task: EvalTask, delay_s: float) -> None:
        """Put ``task`` (the claimed one, maybe with a new attempt count) back after ``delay_s``, and ack the
        claimed task, in one MULTI; it still counts as queued (``pending``)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(DELAYED_EVALS, {f"{uuid.uuid4().hex} {to_json(task)}": time.time() + delay_s})
        self.ack(claimed, pipe)
        pipe.execute()

    def move_due(self, now: float | None = None, limit: int = 100) -> int:
        """Move delayed tasks whose time has come back into the stream; returns how many."""
        at = time.time() if now is None else now
        return int(self._move_due(keys=[DELAYED_EVALS, EVAL_TASKS], args=[at, limit]))

    def queued_tasks(self) -> list[EvalTask]:
        """Every evaluation task queued, being worked on or waiting for a retry (the queue is short)."""
        entries = cast(StreamEntries, self.r.xrange(EVAL_TASKS))
        streamed = [from_json(EvalTask, fields[b"data"]) for _, fields in entries if fields]
        delayed = [from_json(EvalTask, text(m).split(" ", 1)[1]) for m in self.r.zrange(DELAYED_EVALS, 0, -1)]
        return streamed + delayed

    def queued(self) -> int:
        return int(self.r.xlen(EVAL_TASKS)) + int(self.r.zcard(DELAYED_EVALS))

    def pending(self, run_id: str) -> bool:
        """Whether an evaluation of the run is queued, in progress (claimed, not yet acked) or delayed."""
        return any(task.run_id == run_id for task in self.queued_tasks())

    # -- results --------------------------------------------------------------------------------------
    def record_rewards(
        self, task: EvalTask, rewards: Sequence[Sequence[float]], pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Rewards of the prompts from ``task.next_prompt`` on, one list per prompt (again: the same values)."""
        if rewards:
            mapping: dict[FieldT, EncodableT] = {
                str(task.next_prompt + i): json.dumps(list(r)) for i, r in enumerate(rewards)
            }
            target = pipe if pipe is not None else self.r
            target.hset(_results_key(task.run_id, task.version), mapping=mapping)

    def rewards(self, run_id: str, version: int) -> list[list[float]]:
        rows = self.r.hgetall(_results_key(run_id, version))
        return [json.loads(rows[k]) for k in sorted(rows, key=lambda k: int(k))]

    def promotion_state(self, run_id: str) -> PromotionState:
        row = {text(k): text(v) for k, v in self.r.hgetall(_promotion_key(run_id)).items()}

        def number(name: str) -> float | None:
            return float(row[name]) if name in row else None

        return PromotionState(
            base=number("base"),
            best=number("best"),
            best_version=int(row.get("best_version", -1)),
            promoted_best=number("promoted_best"),
            promoted=int(row.get("promoted", -1)),
            since_best=int(row.get("since_best", 0)),
        )

    def finish(
        self,
        runs: RunStore,
        run_id: str,
        version: int,
        metrics: dict[str, float],
        rule: PromotionRule,
        claimed: ClaimedEval | None = None,
    ) -> tuple[AdapterManifest | None, PromotionDecision]:
        """Apply ``rule`` to the run's promotion state and record the outcome in one MULTI: the EVAL event,
        the version's manifest in the index (``eval``, ``promoted``), the new state, a PROMOTION event when
        promoted, COMPLETED with its STATUS event when the rule stops a RUNNING run, and the ack of
        ``claimed`` (a watcher sees the evaluation queued or its outcome, never neither).

        The state, the run and its index are read under WATCH and the whole is retried when another
        writer changed them first, so two workers finishing two versions of one run at once decide as if
        one had finished before the other. Returns the updated manifest (None for a version 0 without
        one: the bare base) and the decision."""
        adapters_key = f"po:run:{run_id}:adapters"
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(_promotion_key(run_id), f"po:run:{run_id}", adapters_key)
                    decision = rule(self.promotion_state(run_id))
                    run = runs.get_run(run_id)
                    raw = self.r.hget(adapters_key, str(version))
                    pipe.multi()
                    manifest = self._record_outcome(pipe, run_id, version, metrics, decision, raw)
                    if decision.stop_reason and run.status == RunStatus.RUNNING:
                        runs.write_status(pipe, run, RunStatus.COMPLETED, decision.stop_reason)
                    if claimed is not None:
                        self.ack(claimed, pipe)
                    pipe.execute()
                    return manifest, decision
                except redis.WatchError:
                    continue  # another evaluation, commit or status change came first: decide again

    def _record_outcome(
        self,
        pipe: redis.client.Pipeline,
        run_id: str,
        version: int,
        metrics: dict[str, float],
        decision: PromotionDecision,
        raw_manifest: bytes | str | None,
    ) -> AdapterManifest | None:
        manifest = from_json(AdapterManifest, raw_manifest) if raw_manifest is not None else None
        if manifest is not None:
            manifest = replace(manifest, eval=dict(metrics), promoted=manifest.promoted or decision.promoted)
            pipe.hset(f"po:run:{run_id}:adapters", str(version), to_json(manifest))
        pipe.hset(_promotion_key(run_id), mapping=_state_fields(decision.state))
        pipe.delete(_results_key(run_id, version))
        summary = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in sorted(metrics.items()))
        events = [RunEvent(run_id=run_id, kind=EventKind.EVAL, step=version, version=version, metrics=metrics,
                           message=f"eval of version {version}: {summary}")]  # fmt: skip
        if decision.promoted:
            events.append(RunEvent(run_id=run_id, kind=EventKind.PROMOTION, step=version, version=version,
                                   metrics=metrics, message=f"version {version} promoted"))  # fmt: skip
            pipe.xadd(PROMOTED_STREAM, {"run_id": run_id, "version": version}, maxlen=_STREAM_MAXLEN,
                      approximate=True)  # fmt: skip
        for event in events:
            pipe.xadd(f"po:run:{run_id}:events", {"data": to_json(event)}, maxlen=_STREAM_MAXLEN,
                      approximate=True)  # fmt: skip
        return manifest

    def read_promoted(self, after_id: str = "$", block_ms: int | None = None) -> list[tuple[str, str, int]]:
        """(stream id, run_id, version) of promotions after ``after_id``."""
        reply = self.r.xread({PROMOTED_STREAM: after_id}, count=100, block=block_ms)
        return [(text(mid), text(f[b"run_id"]), int(f[b"version"])) for mid, f in stream_entries(reply)]

    def last_promoted_id(self) -> str:
        newest = self.r.xrevrange(PROMOTED_STREAM, count=1)
        return text(newest[0][0]) if newest else "0-0"

    def forget_run(self, run_id: str) -> None:
        self.r.delete(_prompts_key(run_id), _promotion_key(run_id))


def _state_fields(state: PromotionState) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {"best_version": str(state.best_version), "promoted": str(state.promoted),
              "since_best": str(state.since_best)}  # fmt: skip
    for name in ("base", "best", "promoted_best"):
        value = getattr(state, name)
        if value is not None:
            fields[name] = repr(float(value))
    return fields


__all__ = [
    "DELAYED_EVALS",
    "EVAL_TASKS",
    "PROMOTED_STREAM",
    "ClaimedEval",
    "EvalStore",
    "EvalTask",
    "PromotionDecision",
    "PromotionRule",
    "PromotionState",
]
