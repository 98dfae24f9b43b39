"""Work queues on Redis Streams with consumer groups.

Prompts, for rollout workers, fairly across runs:
- ``po:run:{run_id}:prompts`` (group ``rollout``): one message per queued prompt of the run.
- ``po:prompts:runs``: the index of runs with queued prompts; ``claim_prompts`` takes a batch from the run
  served least recently (round-robin by claims), so a run with 10k prompts does not hold up a run with
  4 (``state.prompt_scripts`` has the scripts and the rule).
- ``po:prompts:delayed``: prompts waiting for a retry (a transient reward failure, with backoff) or
  deferred (their endpoint is saturated); moved back into their run's stream when due. They still count
  as queued (``po:run:{id}:queued``).
- ``po:prompts``: the single stream of older deployments; its messages are moved into the per-run streams.

Groups, for trainers:
- ``po:run:{run_id}:groups`` (group ``trainer``): scored trajectory groups of one run, for its trainer.

Acknowledgement follows durability: a prompt is acked in the same MULTI/EXEC that queues its group (or
delays it), and a group is acked in the same transaction that commits the step that trained on it
(``RunStore.commit_step``). A worker that dies leaves its messages pending; after ``claim_idle_ms``
another worker takes them with XAUTOCLAIM.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import cast

import redis

from policyopt.core.errors import ResourceExhausted
from policyopt.core.types import PromptTask, TrajectoryGroup, from_json, to_json
from policyopt.state import prompt_scripts
from policyopt.state.connection import StreamEntries, autoclaim, ensure_group, stream_entries, text

log = logging.getLogger(__name__)

PROMPTS_STREAM = "po:prompts"
"""The single prompt stream of older deployments; drained into the per-run streams."""
PROMPT_RUNS_KEY = "po:prompts:runs"
PROMPT_TURN_KEY = "po:prompts:turn"
DELAYED_PROMPTS_KEY = "po:prompts:delayed"
ROLLOUT_GROUP = "rollout"
TRAINER_GROUP = "trainer"
CLAIM_SCAN_RUNS = 64
"""Runs one claim looks at, lowest turn first; runs with only claimed prompts go to the back."""
POLL_S = 0.05
"""Sleep between claim attempts while nothing is queued."""
LEGACY_EVERY_S = 1.0


def prompts_stream(run_id: str) -> str:
    return f"po:run:{run_id}:prompts"


def groups_stream(run_id: str) -> str:
    return f"po:run:{run_id}:groups"


def queued_prompts_key(run_id: str) -> str:
    """Counter of prompts submitted but not yet turned into groups (for RESOURCE_EXHAUSTED)."""
    return f"po:run:{run_id}:queued"


def consumer_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def _field_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """``[k1, v1, k2, v2]`` (a stream entry's fields as a script returns them) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class WorkQueue:
    """Prompts and trajectory groups on Redis Streams."""

    def __init__(self, r: redis.Redis, *, claim_idle_ms: int = 60000, max_queued_prompts: int = 10000):
        self.r = r
        self.claim_idle_ms = claim_idle_ms
        self.max_queued_prompts = max_queued_prompts
        ensure_group(r, PROMPTS_STREAM, ROLLOUT_GROUP)
        self._join_index = r.register_script(prompt_scripts.JOIN_INDEX)
        self._claim = r.register_script(prompt_scripts.CLAIM)
        self._move_due = r.register_script(prompt_scripts.MOVE_DUE)
        self._migrate_legacy = r.register_script(prompt_scripts.MIGRATE_LEGACY)
        self._last_reclaim = 0.0
        self._last_legacy = 0.0

    # -- prompts ---------------------------------------------------------------------------------
    def enqueue_prompts(self, tasks: list[PromptTask]) -> list[str]:
        """Queue prompts atomically (all or none); RESOURCE_EXHAUSTED when the run's queue is full."""
        if not tasks:
            return []
        run_id = tasks[0].run_id
        queued = int(self.r.get(queued_prompts_key(run_id)) or 0)
        if queued + len(tasks) > self.max_queued_prompts:
            raise ResourceExhausted(
                f"run {run_id} has {queued} prompts waiting and the limit is {self.max_queued_prompts}; "
                "wait for rollouts to drain (watch the run) or raise POLICYOPT_MAX_QUEUED_PROMPTS"
            )
        ensure_group(self.r, prompts_stream(run_id), ROLLOUT_GROUP)
        pipe = self.r.pipeline(transaction=True)
        for task in tasks:
            pipe.xadd(prompts_stream(run_id), {"data": to_json(task)})
        pipe.incrby(queued_prompts_key(run_id), len(tasks))
        pipe.hincrby(f"po:run:{run_id}", "prompts", len(tasks))  # the run's submitted-prompts counter
        self._join_index(keys=[PROMPT_RUNS_KEY, PROMPT_TURN_KEY], args=[run_id], client=pipe)
        ids = pipe.execute()[: len(tasks)]
        return [text(i) for i in ids]

    def claim_prompts(
        self, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[tuple[str, PromptTask]]:
        """Up to ``count`` prompts of one run: abandoned ones first, then new ones of the run served least
        recently. Polls every ``POLL_S`` for up to ``block_ms`` while nothing is queued.

        Each call also moves due delayed prompts back and drains the legacy stream (every second).
        """
        deadline = time.monotonic() + block_ms / 1000
        while True:
            self.move_due_prompts()
            if time.monotonic() - self._last_legacy >= LEGACY_EVERY_S:
                self._last_legacy = time.monotonic()
                self.migrate_legacy_prompts(consumer)
            entries = self._reclaim_abandoned(consumer, count)
            if not entries:
                entries = self._claim_new(consumer, count)
            if entries or time.monotonic() + POLL_S > deadline:
                return [(text(mid), from_json(PromptTask, fields[b"data"])) for mid, fields in entries]
            time.sleep(POLL_S)

    def _claim_new(self, consumer: str, count: int) -> StreamEntries:
        reply = self._claim(
            keys=[PROMPT_RUNS_KEY, PROMPT_TURN_KEY], args=[ROLLOUT_GROUP, consumer, count, CLAIM_SCAN_RUNS]
        )
        if not reply:
            return []
        return [(mid, _field_dict(flat)) for mid, flat in reply[1]]

    def _reclaim_abandoned(self, consumer: str, count: int) -> StreamEntries:
        """Prompts a dead worker held for ``claim_idle_ms``, looked for every quarter of that."""
        now = time.monotonic()
        if now - self._last_reclaim < self.claim_idle_ms / 4000:
            return []
        self._last_reclaim = now
        entries: StreamEntries = []
        for run in self.r.zrange(PROMPT_RUNS_KEY, 0, -1):
            stream = prompts_stream(text(run))
            try:
                entries += autoclaim(
                    self.r, stream, ROLLOUT_GROUP, consumer, self.claim_idle_ms, count - len(entries)
                )
            except redis.ResponseError:  # no such stream or group: nothing of it is pending
                continue
            if entries:  # one run per claim, like new prompts
                break
        return entries

    def move_due_prompts(self, now: float | None = None, limit: int = 100) -> int:
        """Move delayed prompts whose time has come back into their runs' streams; returns how many."""
        at = time.time() if now is None else now
        return int(
            self._move_due(
                keys=[DELAYED_PROMPTS_KEY, PROMPT_RUNS_KEY, PROMPT_TURN_KEY], args=[at, limit, ROLLOUT_GROUP]
            )
        )

    def migrate_legacy_prompts(self, consumer: str, limit: int = 100) -> int:
        """Move prompts of the older single stream ``po:prompts`` into their runs' streams."""
        return int(
            self._migrate_legacy(
                keys=[PROMPTS_STREAM, PROMPT_RUNS_KEY, PROMPT_TURN_KEY],
                args=[ROLLOUT_GROUP, consumer, limit, self.claim_idle_ms],
            )
        )

    def complete_prompt(self, message_id: str, task: PromptTask, group: TrajectoryGroup | None) -> str | None:
        """Queue the prompt's group (if any) and ack the prompt in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        if group is not None:
            ensure_group(self.r, groups_stream(group.run_id), TRAINER_GROUP)
            pipe.xadd(groups_stream(group.run_id), {"data": to_json(group)})
        self._ack_prompt(pipe, message_id, task)
        pipe.decr(queued_prompts_key(task.run_id))
        result = pipe.execute()
        return text(result[0]) if group is not None else None

    def delay_prompt(self, message_id: str, task: PromptTask, delay_s: float) -> None:
        """Ack the claimed prompt and queue ``task`` (the same prompt, maybe with a new attempt count) to
        come back after ``delay_s``, in one transaction; it still counts as queued."""
        member = f"{uuid.uuid4().hex} {to_json(task)}"
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(DELAYED_PROMPTS_KEY, {member: time.time() + delay_s})
        self._ack_prompt(pipe, message_id, task)
        pipe.execute()

    def delayed_prompts(self) -> list[tuple[float, PromptTask]]:
        """Every delayed prompt with its due time (unix seconds), soonest first."""
        rows = cast(list[tuple[bytes, float]], self.r.zrange(DELAYED_PROMPTS_KEY, 0, -1, withscores=True))
        return [(float(due), from_json(PromptTask, text(m).split(" ", 1)[1])) for m, due in rows]

    def touch_prompts(self, consumer: str, claims: Iterable[tuple[str, PromptTask]]) -> None:
        """Reset the idle time of prompts still being worked on, so no one else claims them."""
        pipe = self.r.pipeline(transaction=False)
        for message_id, task in claims:
            pipe.xclaim(
                prompts_stream(task.run_id), ROLLOUT_GROUP, consumer, min_idle_time=0,
                message_ids=[message_id], justid=True,
            )  # fmt: skip
        pipe.execute()

    def pending_prompts(self, run_id: str) -> int:
        """Prompts of the run claimed by a worker and not yet acked."""
        try:
            return int(self.r.xpending(prompts_stream(run_id), ROLLOUT_GROUP)["pending"])
        except redis.ResponseError:
            return 0

    @staticmethod
    def _ack_prompt(pipe: redis.client.Pipeline, message_id: str, task: PromptTask) -> None:
        pipe.xack(prompts_stream(task.run_id), ROLLOUT_GROUP, message_id)
        pipe.xdel(prompts_stream(task.run_id), message_id)

    # -- groups ----------------------------------------------------------------------------------
    def enqueue_groups(self, run_id: str, groups: list[TrajectoryGroup]) -> list[str]:
        """Queue client-built groups (SubmitTrajectories) for the run's trainer atomically (all or none).

        RESOURCE_EXHAUSTED when the run's stream already holds ``max_queued_prompts`` groups.
        """
        if not groups:
            return []
        stream = groups_stream(run_id)
        queued = self.queued_groups(run_id)
        if queued + len(groups) > self.max_queued_prompts:
            raise ResourceExhausted(
                f"run {run_id} has {queued} groups waiting for its trainer and the limit is "
                f"{self.max_queued_prompts}; wait for steps to drain them (watch the run) or raise "
                "POLICYOPT_MAX_QUEUED_PROMPTS"
            )
        ensure_group(self.r, stream, TRAINER_GROUP)
        pipe = self.r.pipeline(transaction=True)
        for group in groups:
            pipe.xadd(stream, {"data": to_json(group)})
        return [i.decode() for i in pipe.execute()]

    def resample_group(self, message_id: str, group: TrajectoryGroup, attempt: int | None = None) -> str:
        """Send a group's prompt back to the rollout workers and drop the group, in one transaction.

        For groups sampled from a prompt (``group.prompt`` set) that are staler than the run allows, or
        that dynamic sampling filtered out (``attempt`` counts those rounds); nothing is lost if the
        process dies mid-way.
        """
        task = PromptTask(
            group.run_id, group.prompt_id, group.prompt, group.metadata, group.trace,
            attempt=group.attempt if attempt is None else attempt,
        )  # fmt: skip
        ensure_group(self.r, prompts_stream(group.run_id), ROLLOUT_GROUP)
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(prompts_stream(group.run_id), {"data": to_json(task)})
        pipe.incr(queued_prompts_key(group.run_id))
        self._join_index(keys=[PROMPT_RUNS_KEY, PROMPT_TURN_KEY], args=[group.run_id], client=pipe)
        self.ack_groups(pipe, group.run_id, [message_id])
        return text(pipe.execute()[0])

    def read_groups(
        self, run_id: str, consumer: str, count: int, block_ms: int = 1000
    ) -> list[tuple[str, TrajectoryGroup]]:
        """Groups for this trainer: own pending first, then abandoned, then new."""
        stream = groups_stream(run_id)
        ensure_group(self.r, stream, TRAINER_GROUP)
        entries = stream_entries(self.r.xreadgroup(TRAINER_GROUP, consumer, {stream: "0"}, count=count))
        if len(entries) < count:
            entries += autoclaim(
                self.r, stream, TRAINER_GROUP, consumer, self.claim_idle_ms, count - len(entries)
            )
        if len(entries) < count:
            entries += stream_entries(
                self.r.xreadgroup(
                    TRAINER_GROUP, consumer, {stream: ">"}, count=count - len(entries), block=block_ms
                )
            )
        seen: set[bytes] = set()
        out = []
        for mid, fields in entries:
            if mid not in seen:
                seen.add(mid)
                out.append((mid.decode(), from_json(TrajectoryGroup, fields[b"data"])))
        return out

    def adopt_pending_groups(self, run_id: str, consumer: str) -> list[tuple[str, TrajectoryGroup]]:
        """Move every pending group of the run to ``consumer`` at once, whatever its idle time.

        Only for the holder of the run's trainer lease: holding it means no one else is training the
        run, so the previous owners of these messages are gone.
        """
        stream = groups_stream(run_id)
        ensure_group(self.r, stream, TRAINER_GROUP)
        out: list[tuple[str, TrajectoryGroup]] = []
        cursor: bytes | str = "0-0"
        while True:
            reply = self.r.xautoclaim(
                stream, TRAINER_GROUP, consumer, min_idle_time=0, start_id=cursor, count=100
            )
            out.extend(
                (mid.decode(), from_json(TrajectoryGroup, fields[b"data"]))
                for mid, fields in reply[1]
                if fields
            )
            cursor = reply[0]
            if cursor in (b"0-0", "0-0"):
                return out

    def pending_group_ids(self, run_id: str) -> list[str]:
        stream = groups_stream(run_id)
        ensure_group(self.r, stream, TRAINER_GROUP)
        rows = self.r.xpending_range(stream, TRAINER_GROUP, min="-", max="+", count=100000)
        return [text(row["message_id"]) for row in cast(list[dict[str, bytes]], rows)]

    def ack_groups(self, pipe: redis.client.Pipeline, run_id: str, message_ids: Iterable[str]) -> None:
        ids = list(message_ids)
        if ids:
            pipe.xack(groups_stream(run_id), TRAINER_GROUP, *ids)
            pipe.xdel(groups_stream(run_id), *ids)

    def queued_prompts(self, run_id: str) -> int:
        return int(self.r.get(queued_prompts_key(run_id)) or 0)

    def queued_groups(self, run_id: str) -> int:
        return int(self.r.xlen(groups_stream(run_id)))
