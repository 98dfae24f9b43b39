"""The run sessions a trainer keeps in memory: least recently trained first, within a memory budget.

Memory is counted from tensor sizes: each shared base model once (``BasePool``), plus each session's
LoRA weights and gradients, optimizer state and critic (``RunSession.memory_bytes``). Beyond the budget
the least recently trained sessions are dropped (their adapter deleted from the shared base); the run
keeps its lease and reloads from its last committed version and checkpoint on its next turn.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator

from policyopt.workers.train.base_pool import BasePool
from policyopt.workers.train.session import RunSession

log = logging.getLogger(__name__)


class SessionCache:
    """Sessions by run id in least-recently-trained order, with their measured bytes."""

    def __init__(self, pool: BasePool, budget_bytes: int) -> None:
        self.pool = pool
        self.budget_bytes = budget_bytes
        self._sessions: OrderedDict[str, RunSession] = OrderedDict()
        self._bytes: dict[str, int] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._sessions

    def __getitem__(self, run_id: str) -> RunSession:
        return self._sessions[run_id]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, run_id: str) -> RunSession | None:
        return self._sessions.get(run_id)

    def add(self, session: RunSession) -> None:
        self._sessions[session.run.run_id] = session
        self.touch(session.run.run_id)

    def touch(self, run_id: str) -> None:
        """Mark ``run_id`` most recently trained and measure it again (its optimizer state grows)."""
        self._sessions.move_to_end(run_id)
        self._bytes[run_id] = self._sessions[run_id].memory_bytes()

    def drop(self, run_id: str) -> bool:
        """Forget the session and delete its adapter from the shared base; True if there was one."""
        session = self._sessions.pop(run_id, None)
        self._bytes.pop(run_id, None)
        if session is None:
            return False
        if session.base is not None:
            self.pool.detach(session.base, session.adapter)
        return True

    def memory_bytes(self) -> int:
        return self.pool.base_bytes() + sum(self._bytes.values())

    def evict_over_budget(self, keep: str) -> list[str]:
        """Drop least recently trained sessions (never ``keep``) until within budget; the evicted run ids."""
        evicted = []
        for run_id in list(self._sessions):
            if self.memory_bytes() <= self.budget_bytes:
                break
            if run_id != keep:
                self.drop(run_id)
                evicted.append(run_id)
        if evicted:
            log.info(
                "evicted %s to stay within %.0f MB (now %.1f MB)",
                evicted,
                self.budget_bytes / 2**20,
                self.memory_bytes() / 2**20,
            )
        return evicted


__all__ = ["SessionCache"]
