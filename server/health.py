"""The server's gRPC health (``grpc.health.v1``): SERVING while Redis answers a PING, NOT_SERVING while not.

A background thread pings Redis every ``interval_s`` on a connection of its own with a short timeout, so a
Redis that hangs turns health NOT_SERVING within about ``interval_s + timeout_s`` and a busy request pool
never delays the probe. It sets the overall service ("") and every name in ``service_names``, and logs
transitions only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import redis
from grpc_health.v1 import health, health_pb2
from redis.backoff import NoBackoff
from redis.retry import Retry

from policyopt.core.metrics import redis_error

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0


def probe_client(r: redis.Redis, timeout_s: float) -> redis.Redis:
    """A client to the same Redis as ``r`` (URL, auth, TLS) with one connection, ``timeout_s`` deadlines and
    no retries: a probe reports what it sees now."""
    pool = r.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **kwargs
        )
    )


class RedisHealth:
    """Keeps ``servicer``'s statuses in step with whether Redis answers; ``start()``/``stop()``."""

    def __init__(
        self,
        servicer: health.HealthServicer,
        r: redis.Redis,
        service_names: Sequence[str],
        *,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ):
        self._servicer = servicer
        self._names = ("", *service_names)
        self._client = probe_client(r, timeout_s)
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="policyopt-health", daemon=True)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            self._servicer.set(name, status)
        self._serving = serving

    def check(self) -> bool:
        """PING Redis once and set the statuses from the answer; whether it answered."""
        try:
            self._client.ping()
            answered = True
        except (redis.RedisError, OSError) as exc:
            redis_error("health_ping")
            if self._serving is not False:
                log.warning("Redis unreachable, health NOT_SERVING: %s", exc)
            answered = False
        if answered and self._serving is False:
            log.info("Redis answers again, health SERVING")
        if self._stopped.is_set():  # stop() set the shutdown statuses; a late probe must not undo them
            return answered
        self.set_serving(answered)
        return answered

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.check()

    def start(self) -> RedisHealth:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + 2 * PROBE_TIMEOUT_S)
        self._client.close()
