"""Fair trainer time across runs: a virtual-time scheduler measured in trainer seconds.

Each run has a virtual time, the trainer seconds it has been served. Among the runs that are ready
(enough queued groups) and not backing off, ``pick`` returns the one with the least virtual time;
``charge`` adds a turn's wall time to it. A run seen for the first time, or one that becomes ready
again after waiting for groups, starts at no less than ``floor`` (the least virtual time of the ready
runs that stayed ready, never decreasing), so it neither starves the others with credit saved while it
waited nor is starved.
This is start-time fair queuing (as CFS's ``min_vruntime``); pure bookkeeping, no Redis, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class FairScheduler:
    """Virtual time per run (trainer seconds served), a floor for newcomers, and per-run retry times."""

    virtual_time: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0
    not_before: dict[str, float] = field(default_factory=dict)
    _was_ready: set[str] = field(default_factory=set)

    def order(self, ready: Iterable[str], now: float) -> list[str]:
        """The ready runs out of backoff, least served first (ties by run id)."""
        eligible = sorted({r for r in ready if self.not_before.get(r, 0.0) <= now})
        staying = [r for r in eligible if r in self._was_ready]
        if staying:
            self.floor = max(self.floor, min(self.virtual_time[r] for r in staying))
        for run_id in eligible:
            if run_id not in self._was_ready:  # new, or waking from a wait for groups or a backoff
                self.virtual_time[run_id] = max(self.virtual_time.get(run_id, self.floor), self.floor)
        self._was_ready = set(eligible)
        return sorted(eligible, key=lambda r: (self.virtual_time[r], r))

    def pick(self, ready: Iterable[str], now: float) -> str | None:
        """The ready run to train next, or None."""
        ordered = self.order(ready, now)
        return ordered[0] if ordered else None

    def charge(self, run_id: str, seconds: float) -> None:
        """Account ``seconds`` of trainer time to ``run_id``."""
        self.virtual_time[run_id] = self.virtual_time.get(run_id, self.floor) + max(seconds, 0.0)

    def back_off(self, run_id: str, until: float) -> None:
        """``run_id`` is not eligible before ``until`` (a retry after a failed step)."""
        self.not_before[run_id] = until

    def clear_backoff(self, run_id: str) -> None:
        self.not_before.pop(run_id, None)

    def forget(self, run_id: str) -> None:
        """Drop an ended run's bookkeeping."""
        self.virtual_time.pop(run_id, None)
        self.not_before.pop(run_id, None)
        self._was_ready.discard(run_id)


def retry_delay(failures: int, base_s: float, cap_s: float = 300.0) -> float:
    """Exponential backoff: ``base_s * 2**(failures - 1)``, at most ``cap_s``."""
    return min(cap_s, base_s * 2 ** max(failures - 1, 0))


__all__ = ["FairScheduler", "retry_delay"]
