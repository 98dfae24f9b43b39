"""Per-run trainer leases in Redis: one trainer trains a run at a time, and a dead one's lease expires.

A lease is ``SET po:run:{id}:trainer <token> NX PX ttl``. A background thread renews every held
lease at a third of its time to live; renewal and release only touch a key that still holds our
token (a Lua compare-and-set), so a trainer that stalled past its lease cannot extend or drop the
new owner's. The commit checks the token inside its transaction (``RunStore.commit_step(guard=...)``).
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(run_id: str) -> str:
    return f"po:run:{run_id}:trainer"


class LeaseKeeper:
    """Takes, renews and releases the run leases of one trainer process."""

    def __init__(self, r: redis.Redis, owner: str, ttl_ms: int = 30000):
        self.r = r
        self.ttl_ms = ttl_ms
        self._owner = owner
        self._tokens: dict[str, str] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def acquire(self, run_id: str) -> bool:
        """Take the run's lease if it is free (or already ours)."""
        with self._lock:
            if run_id in self._tokens and run_id not in self._lost:
                return True
            token = f"{self._owner}:{uuid.uuid4().hex[:8]}"
            if not self.r.set(lease_key(run_id), token, nx=True, px=self.ttl_ms):
                return False
            self._tokens[run_id] = token
            self._lost.discard(run_id)
            return True

    def holds(self, run_id: str) -> bool:
        """Whether the lease is ours as far as the last renewal knows."""
        with self._lock:
            return run_id in self._tokens and run_id not in self._lost

    def guard(self, run_id: str) -> tuple[str, str]:
        """(key, token) for a transaction that must fail if the lease changed hands."""
        with self._lock:
            return lease_key(run_id), self._tokens[run_id]

    def held(self) -> list[str]:
        with self._lock:
            return sorted(set(self._tokens) - self._lost)

    def release(self, run_id: str) -> None:
        with self._lock:
            token = self._tokens.pop(run_id, None)
            self._lost.discard(run_id)
        if token is not None:
            try:
                self._release(keys=[lease_key(run_id)], args=[token])
            except redis.RedisError as exc:
                log.warning("could not release the lease of run %s (it will expire): %s", run_id, exc)

    def close(self) -> None:
        """Stop renewing and release every lease, so a successor need not wait for them to expire."""
        self._stop.set()
        self._thread.join(timeout=5)
        for run_id in list(self._tokens):
            self.release(run_id)

    def renew_all(self) -> None:
        with self._lock:
            held = dict(self._tokens)
        for run_id, token in held.items():
            try:
                ok = self._renew(keys=[lease_key(run_id)], args=[token, self.ttl_ms])
            except redis.RedisError as exc:
                log.warning("lease renewal of run %s failed: %s", run_id, exc)
                continue
            if not ok:
                log.warning("lost the trainer lease of run %s; abandoning its current step", run_id)
                with self._lock:
                    self._lost.add(run_id)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            self.renew_all()


__all__ = ["LeaseKeeper", "lease_key"]
