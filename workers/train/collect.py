"""Collecting one step's trajectory groups from the run's stream, with DAPO dynamic sampling.

Every group read stays pending (unacked) until the step that used it commits, so a trainer killed
while collecting loses nothing. Groups the filter drops stay pending too and are acked with the
commit; a later call re-reads its own pending groups first, so collecting may span calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from policyopt.core.types import TrajectoryGroup
from policyopt.state.queue import WorkQueue
from policyopt.workers.algorithms import MethodSpec


@dataclass
class CollectedGroups:
    """Groups for one step; ``dropped_*`` were read and filtered out (acked with the commit)."""

    groups: list[TrajectoryGroup] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    dropped_message_ids: list[str] = field(default_factory=list)
    dropped_group_ids: list[str] = field(default_factory=list)
    dropped_groups: list[TrajectoryGroup] = field(default_factory=list)
    exhausted: bool = False  # the filter's limit on groups examined was reached
    resampled: int = 0  # stale groups whose prompts went back to the rollout workers

    @property
    def examined(self) -> int:
        return len(self.groups) + len(self.dropped_message_ids)

    @property
    def group_ids(self) -> list[str]:
        return [group_key(g, mid) for g, mid in zip(self.groups, self.message_ids, strict=True)]


def group_key(group: TrajectoryGroup, message_id: str) -> str:
    """The id a manifest records for a group: its own id, or the stream id when it has none."""
    return group.group_id or message_id


KeepGroup = Callable[[TrajectoryGroup], bool]


def group_filter_of(spec: MethodSpec, prompts_per_step: int) -> tuple[KeepGroup | None, int | None]:
    """(keep predicate on raw scores, max groups examined per step), or (None, None) without a filter.

    DAPO dynamic sampling: a dropped group is replaced by reading more, for up to
    ``max_extra_rounds`` extra batches' worth of groups; then a short batch trains.
    """
    group_filter = spec.group_filter
    if not group_filter.enabled:
        return None, None

    def keep(group: TrajectoryGroup) -> bool:
        return group_filter.keep([t.reward for t in group.trajectories])

    return keep, (1 + group_filter.max_extra_rounds) * prompts_per_step


def collect_groups(
    queue: WorkQueue,
    run_id: str,
    consumer: str,
    target: int,
    *,
    keep: KeepGroup | None = None,
    max_examined: int | None = None,
    block_ms: int = 500,
    should_continue: Callable[[], bool] = lambda: True,
    is_stale: Callable[[TrajectoryGroup], bool] = lambda group: False,
) -> CollectedGroups:
    """Read groups (own pending, abandoned, then new) until ``target`` pass ``keep``.

    A group for which ``is_stale`` holds is not trained on: its prompt is queued again for a fresh
    rollout (``WorkQueue.resample_group``), so training never uses samples older than the run allows.
    Returns early with a short batch when the stream has nothing more right now, when
    ``should_continue`` turns false, or (``exhausted``) after ``max_examined`` groups were read.
    """
    batch = CollectedGroups()
    taken: set[str] = set()
    limit = max_examined if keep is not None and max_examined else math.inf
    while len(batch.groups) < target and should_continue():
        room = limit - batch.examined
        if room <= 0:
            batch.exhausted = True
            break
        want = int(min(target - len(batch.groups), room))
        # Own pending messages come back first, including the ones taken earlier in this loop.
        entries = queue.read_groups(run_id, consumer, count=len(taken) + want, block_ms=block_ms)
        fresh = [(mid, group) for mid, group in entries if mid not in taken]
        if not fresh:
            break
        for mid, group in fresh[:want]:
            taken.add(mid)
            if is_stale(group):
                queue.resample_group(mid, group)
                batch.resampled += 1
            elif keep is None or keep(group):
                batch.groups.append(group)
                batch.message_ids.append(mid)
            else:
                batch.dropped_message_ids.append(mid)
                batch.dropped_group_ids.append(group_key(group, mid))
                batch.dropped_groups.append(group)
    return batch


def staleness_metrics(groups: list[TrajectoryGroup], policy_version: int) -> dict[str, float]:
    """How many updates the step's groups lag the policy they train (0: sampled by it), mean and max.

    With rollouts pipelined with training the lag is usually 1; it is bounded by the run's
    ``max_staleness`` for prompt groups, which are resampled beyond it.
    """
    lags = [max(0, policy_version - g.adapter_version) for g in groups]
    if not lags:
        return {}
    return {"trainer/staleness_mean": sum(lags) / len(lags), "trainer/staleness_max": float(max(lags))}


__all__ = [
    "CollectedGroups",
    "KeepGroup",
    "collect_groups",
    "group_filter_of",
    "group_key",
    "staleness_metrics",
]
