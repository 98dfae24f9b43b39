"""Which active runs have a step's worth of queued groups, found without loading a model.

A run is ready when its groups stream holds at least ``prompts_per_step`` entries (acked groups are
deleted, so the length is pending + undelivered), or one with a group filter (DAPO: any queued group
may be kept), and its lease is ours or free. A run whose last turn came up short (stale or filtered
groups) waits until its stream length changes, so it costs nothing while nothing new arrives.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from policyopt.state.queue import groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms import run_method
from policyopt.workers.train.lease import lease_key


class ReadyRuns:
    """Per-run thresholds and short-turn marks, and one pipelined probe of all active runs per pass."""

    def __init__(self, r: redis.Redis, runs: RunStore) -> None:
        self.r = r
        self.runs = runs
        self.needed: dict[str, int] = {}  # run -> queued groups that make it ready
        self.waiting: dict[str, int] = {}  # run -> its stream length when its last turn came up short

    def probe(self, active: list[str], holds: Callable[[str], bool]) -> list[str]:
        """The active runs with enough queued groups whose lease is ours (``holds``) or free."""
        pipe = self.r.pipeline(transaction=False)
        for run_id in active:
            pipe.xlen(groups_stream(run_id))
            pipe.exists(lease_key(run_id))
        replies = pipe.execute()
        ready = []
        for i, run_id in enumerate(active):
            queued, leased = int(replies[2 * i]), bool(replies[2 * i + 1])
            if queued < self._needed(run_id) or queued == self.waiting.get(run_id):
                continue
            if holds(run_id) or not leased:
                ready.append(run_id)
        return ready

    def came_up_short(self, run_id: str) -> None:
        """The run's turn found too few usable groups: not ready until its stream changes."""
        self.waiting[run_id] = int(self.r.xlen(groups_stream(run_id)))

    def trained(self, run_id: str) -> None:
        self.waiting.pop(run_id, None)

    def forget(self, run_id: str) -> None:
        self.needed.pop(run_id, None)
        self.waiting.pop(run_id, None)

    def _needed(self, run_id: str) -> int:
        if run_id not in self.needed:
            config = self.runs.get_run(run_id).config
            try:
                filtered = run_method(config).group_filter.enabled
            except Exception:  # the session load reports the method's problem, with the run failed
                filtered = False
            self.needed[run_id] = 1 if filtered else config.prompts_per_step
        return self.needed[run_id]


__all__ = ["ReadyRuns"]
