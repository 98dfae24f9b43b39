"""Per-tenant limits on open streams and concurrent unary calls, and the thread pool they share.

grpc serves every call on one thread pool, and a server-streaming call (WatchRun, WatchAdapters,
PullAdapter) holds its thread for as long as it is open. ``ThreadPlan`` splits the pool in two:

- streams: at most ``stream_slots`` open at once in all (half the pool), and at most
  ``max_streams_per_tenant`` per tenant;
- unary calls: the other half, and at most ``max_concurrent_rpcs_per_tenant`` per tenant at once;
- grpc's ``maximum_concurrent_rpcs`` is the pool size, so calls never wait in a queue behind streams:
  beyond it grpc itself answers RESOURCE_EXHAUSTED.

So streaming clients can never take the threads unary calls (and health checks) need. Calls without a
tenant (health checking and reflection, open to probes) are not limited when unary; their streams (health
``Watch``, reflection) count against the total and against the pseudo-tenant ``NO_TENANT``.

``LimitsInterceptor`` runs after auth (it reads ``current_tenant()``), takes a slot when the handler
starts and gives it back when the handler's thread is done: a unary call's return or error, a stream's
last message, error, or the client's cancel (the stream loops stop within ``poll_ms`` of it).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from policyopt.core.errors import ResourceExhausted
from policyopt.core.settings import Settings
from policyopt.server.errors import abort_with
from policyopt.server.interceptors import Continuation, tenant_or_none, wrap_handler

NO_TENANT = "(no API key)"
MIN_POOL = 64
"""Threads of the default pool: 32 streams and 32 unary calls."""
MAX_POOL = 512


@dataclass(frozen=True)
class ThreadPlan:
    """How the server's thread pool is shared; ``pool`` threads, ``stream_slots`` of them for streams."""

    pool: int

    @property
    def stream_slots(self) -> int:
        return max(1, self.pool // 2)

    @classmethod
    def for_settings(cls, settings: Settings, pool: int | None = None) -> ThreadPlan:
        """``pool`` threads, or by default enough that every tenant (``api_keys``) can hold all its
        streams at once: 2 x tenants x ``max_streams_per_tenant``, within [MIN_POOL, MAX_POOL]."""
        if pool is None:
            tenants = len(set(settings.api_keys.values())) or 1
            pool = min(MAX_POOL, max(MIN_POOL, 2 * tenants * settings.max_streams_per_tenant))
        return cls(pool=max(2, pool))


class Slots:
    """Counts of what each key holds open: at most ``per_key`` each, and ``total`` in all (0: no total)."""

    def __init__(self, per_key: int, total: int = 0) -> None:
        self.per_key = per_key
        self.total = total
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def acquire(self, key: str) -> str:
        """Takes a slot for ``key``: "" when taken, else which limit is full ("key" or "total")."""
        with self._lock:
            if self._held[key] >= self.per_key:
                return "key"
            if self.total and sum(self._held.values()) >= self.total:
                return "total"
            self._held[key] += 1
            return ""

    def release(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def held(self, key: str | None = None) -> int:
        with self._lock:
            return sum(self._held.values()) if key is None else self._held[key]


class LimitsInterceptor(grpc.ServerInterceptor):
    """Per-tenant stream and unary-call slots (see the module docstring)."""

    def __init__(self, settings: Settings, plan: ThreadPlan) -> None:
        self.plan = plan
        self.streams = Slots(settings.max_streams_per_tenant, plan.stream_slots)
        self.calls = Slots(settings.max_concurrent_rpcs_per_tenant)

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        return wrap_handler(
            handler,
            lambda behavior, streaming: self._stream(behavior) if streaming else self._unary(behavior),
        )

    def _unary(self, behavior: Callable[..., object]) -> Callable[..., object]:
        def call(request: object, context: grpc.ServicerContext) -> object:
            tenant = tenant_or_none()
            if tenant is None:  # health checks: never refused here
                return behavior(request, context)
            if self.calls.acquire(tenant):
                abort_with(context, self._too_many_calls())
            try:
                return behavior(request, context)
            finally:
                self.calls.release(tenant)

        return call

    def _stream(self, behavior: Callable[..., object]) -> Callable[..., object]:
        def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
            tenant = tenant_or_none() or NO_TENANT
            full = self.streams.acquire(tenant)
            if full:
                abort_with(context, self._too_many_streams(full))
            try:
                yield from behavior(request, context)  # type: ignore[misc]
            finally:
                self.streams.release(tenant)

        return stream

    def _too_many_calls(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"this tenant already has {self.calls.per_key} calls in progress, its limit (the server's "
            "POLICYOPT_MAX_CONCURRENT_RPCS_PER_TENANT); wait for one to finish before sending more"
        )

    def _too_many_streams(self, full: str) -> ResourceExhausted:
        if full == "key":
            return ResourceExhausted(
                f"this tenant already has {self.streams.per_key} streams open (WatchRun, WatchAdapters, "
                "PullAdapter), its limit (the server's POLICYOPT_MAX_STREAMS_PER_TENANT); close a stream "
                "you no longer read (cancel the watch) and retry"
            )
        return ResourceExhausted(
            f"the server has {self.streams.total} streams open, all it keeps open at once (half of its "
            f"{self.plan.pool} threads, the rest serve unary calls); retry in a moment"
        )
