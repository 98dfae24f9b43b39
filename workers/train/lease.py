"""Per-run trainer leases in Redis: one trainer trains a run at a time, and a dead one's lease expires.

A lease is ``SET po:run:{id}:trainer <token> NX PX ttl``. A background thread renews every held
lease at a third of its time to live; renewal and release only touch a key that still holds our
token (a Lua compare-and-set), so a trainer that stalled past its lease cannot extend or drop the
new owner's. The commit checks the token inside its transaction (``RunStore.commit_step(guard=...)``).

Least-loaded placement: each trainer publishes how many leases it holds (hash ``po:trainers:load``)
with a heartbeat (sorted set ``po:trainers:alive``, scored by expiry), refreshed with the renewals.
A trainer defers taking a new run while another live trainer holds fewer leases (``should_defer``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from policyopt.core.metrics import redis_error

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


LOADS_KEY = "po:trainers:load"
ALIVE_KEY = "po:trainers:alive"


def lease_key(run_id: str) -> str:
    return f"po:run:{run_id}:trainer"


class LeaseKeeper:
    """Takes, renews and releases the run leases of one trainer process."""

    def __init__(self, r: redis.Redis, owner: str, ttl_ms: int = 30000):
        self.r = r
        self.ttl_ms = ttl_ms
        self._owner = owner
        self.member = f"{owner}:{uuid.uuid4().hex[:8]}"  # this keeper in the load registry
        self._tokens: dict[str, str] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self.publish_load()
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
        self.publish_load()
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
                redis_error("lease_release")
                log.warning("could not release the lease of run %s (it will expire): %s", run_id, exc)
            self.publish_load()

    # -- load registry --------------------------------------------------------------------------------
    def publish_load(self) -> None:
        """Heartbeat with the number of leases held; entries whose heartbeat expired are removed."""
        now_ms = int(time.time() * 1000)
        try:
            dead = [m for m in self._members(0, now_ms) if m != self.member]
            pipe = self.r.pipeline(transaction=False)
            if dead:
                pipe.zrem(ALIVE_KEY, *dead)
                pipe.hdel(LOADS_KEY, *dead)
            pipe.zadd(ALIVE_KEY, {self.member: now_ms + self.ttl_ms})
            pipe.hset(LOADS_KEY, self.member, len(self.held()))
            pipe.execute()
        except redis.RedisError as exc:
            redis_error("publish_load")
            log.warning("could not publish this trainer's load: %s", exc)

    def fewest_elsewhere(self) -> int | None:
        """The fewest leases held by another live trainer, or None when there is none."""
        now_ms = int(time.time() * 1000)
        others = [m for m in self._members(now_ms, "+inf") if m != self.member]
        if not others:
            return None
        loads = [int(v) for v in self.r.hmget(LOADS_KEY, others) if v is not None]
        return min(loads) if loads else None

    def _members(self, low: int, high: int | str) -> list[str]:
        """Trainers in the registry whose heartbeat expires within [low, high] (ms since the epoch)."""
        return [
            m.decode() if isinstance(m, bytes) else str(m) for m in self.r.zrangebyscore(ALIVE_KEY, low, high)
        ]

    def should_defer(self) -> bool:
        """Whether a new run should be left to a live trainer holding fewer leases (ties take it)."""
        fewest = self.fewest_elsewhere()
        return fewest is not None and fewest < len(self.held())

    def _withdraw(self) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(ALIVE_KEY, self.member)
            pipe.hdel(LOADS_KEY, self.member)
            pipe.execute()
        except redis.RedisError as exc:
            redis_error("withdraw_load")
            log.warning("could not withdraw this trainer from the load registry: %s", exc)

    def close(self) -> None:
        """Stop renewing and release every lease, so a successor need not wait for them to expire."""
        self._stop.set()
        self._thread.join(timeout=5)
        for run_id in list(self._tokens):
            self.release(run_id)
        self._withdraw()

    def renew_all(self) -> None:
        """Renew every held lease in one round trip, then refresh the heartbeat."""
        with self._lock:
            held = dict(self._tokens)
        if held:
            pipe = self.r.pipeline(transaction=False)
            for run_id, token in held.items():
                self._renew(keys=[lease_key(run_id)], args=[token, self.ttl_ms], client=pipe)
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                redis_error("lease_renew")
                log.warning("lease renewal failed: %s", exc)
                return
            for run_id, ok in zip(held, results, strict=True):
                if isinstance(ok, Exception):
                    log.warning("lease renewal of run %s failed: %s", run_id, ok)
                elif not ok:
                    log.warning("lost the trainer lease of run %s; abandoning its current step", run_id)
                    with self._lock:
                        self._lost.add(run_id)
        self.publish_load()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            self.renew_all()


__all__ = ["ALIVE_KEY", "LOADS_KEY", "LeaseKeeper", "lease_key"]
