"""Work queues on Redis Streams with consumer groups.

Two kinds of stream:
- ``po:prompts`` (group ``rollout``): one message per submitted prompt, for rollout workers.
- ``po:run:{run_id}:groups`` (group ``trainer``): scored trajectory groups of one run, for its trainer.

Acknowledgement follows durability: a prompt is acked in the same MULTI/EXEC that queues its group,
and a group is acked in the same transaction that commits the step that trained on it
(``RunStore.commit_step``). A worker that dies leaves its messages pending; after
``claim_idle_ms`` another worker takes them with XAUTOCLAIM.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import cast

import redis

from policyopt.core.errors import ResourceExhausted
from policyopt.core.types import PromptTask, TrajectoryGroup, from_json, to_json
from policyopt.state.connection import StreamEntries, stream_entries, text

log = logging.getLogger(__name__)

PROMPTS_STREAM = "po:prompts"
ROLLOUT_GROUP = "rollout"
TRAINER_GROUP = "trainer"


def groups_stream(run_id: str) -> str:
    return f"po:run:{run_id}:groups"


def queued_prompts_key(run_id: str) -> str:
    """Counter of prompts submitted but not yet turned into groups (for RESOURCE_EXHAUSTED)."""
    return f"po:run:{run_id}:queued"


def consumer_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def _ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _autoclaim(
    r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
) -> StreamEntries:
    reply = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count)
    # [next_id, entries] on 6.2, [next_id, entries, deleted_ids] on 7+: take the second element only.
    items: StreamEntries = reply[1] if isinstance(reply, list | tuple) and len(reply) >= 2 else []
    return [(mid, fields) for mid, fields in items if fields]


class WorkQueue:
    """Prompts and trajectory groups on Redis Streams."""

    def __init__(self, r: redis.Redis, *, claim_idle_ms: int = 60000, max_queued_prompts: int = 10000):
        self.r = r
        self.claim_idle_ms = claim_idle_ms
        self.max_queued_prompts = max_queued_prompts
        _ensure_group(r, PROMPTS_STREAM, ROLLOUT_GROUP)

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
        pipe = self.r.pipeline(transaction=True)
        for task in tasks:
            pipe.xadd(PROMPTS_STREAM, {"data": to_json(task)})
        pipe.incrby(queued_prompts_key(run_id), len(tasks))
        pipe.hincrby(f"po:run:{run_id}", "prompts", len(tasks))  # the run's submitted-prompts counter
        ids = pipe.execute()[: len(tasks)]
        return [i.decode() for i in ids]

    def claim_prompts(
        self, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[tuple[str, PromptTask]]:
        """Prompts for this consumer: its own pending ones first, then abandoned ones, then new ones."""
        entries = stream_entries(
            self.r.xreadgroup(ROLLOUT_GROUP, consumer, {PROMPTS_STREAM: "0"}, count=count)
        )
        if not entries:
            entries = _autoclaim(self.r, PROMPTS_STREAM, ROLLOUT_GROUP, consumer, self.claim_idle_ms, count)
        if not entries:
            entries = stream_entries(
                self.r.xreadgroup(ROLLOUT_GROUP, consumer, {PROMPTS_STREAM: ">"}, count=count, block=block_ms)
            )
        return [(mid.decode(), from_json(PromptTask, fields[b"data"])) for mid, fields in entries]

    def complete_prompt(self, message_id: str, task: PromptTask, group: TrajectoryGroup | None) -> str | None:
        """Queue the prompt's group (if any) and ack the prompt in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        if group is not None:
            _ensure_group(self.r, groups_stream(group.run_id), TRAINER_GROUP)
            pipe.xadd(groups_stream(group.run_id), {"data": to_json(group)})
        pipe.xack(PROMPTS_STREAM, ROLLOUT_GROUP, message_id)
        pipe.xdel(PROMPTS_STREAM, message_id)
        pipe.decr(queued_prompts_key(task.run_id))
        result = pipe.execute()
        return result[0].decode() if group is not None else None

    def touch_prompt(self, consumer: str, message_id: str) -> None:
        """Reset the idle time of a prompt still being worked on, so no one else claims it."""
        self.r.xclaim(
            PROMPTS_STREAM, ROLLOUT_GROUP, consumer, min_idle_time=0, message_ids=[message_id], justid=True
        )

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
        _ensure_group(self.r, stream, TRAINER_GROUP)
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
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(PROMPTS_STREAM, {"data": to_json(task)})
        pipe.incr(queued_prompts_key(group.run_id))
        self.ack_groups(pipe, group.run_id, [message_id])
        return text(pipe.execute()[0])

    def read_groups(
        self, run_id: str, consumer: str, count: int, block_ms: int = 1000
    ) -> list[tuple[str, TrajectoryGroup]]:
        """Groups for this trainer: own pending first, then abandoned, then new."""
        stream = groups_stream(run_id)
        _ensure_group(self.r, stream, TRAINER_GROUP)
        entries = stream_entries(self.r.xreadgroup(TRAINER_GROUP, consumer, {stream: "0"}, count=count))
        if len(entries) < count:
            entries += _autoclaim(
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
        _ensure_group(self.r, stream, TRAINER_GROUP)
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
        _ensure_group(self.r, stream, TRAINER_GROUP)
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
