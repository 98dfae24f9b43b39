"""The server's health follows Redis: SERVING while it answers a PING, NOT_SERVING (promptly) while not."""

from __future__ import annotations

import socket
import time

import redis
from grpc_health.v1 import health, health_pb2

from policyopt.server.app import SERVICE_NAME
from policyopt.server.health import RedisHealth


def status(servicer: health.HealthServicer, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    return int(servicer.Check(request, None).status)


def test_health_is_serving_while_redis_answers(valkey_url: str) -> None:
    servicer = health.HealthServicer()
    probe = RedisHealth(servicer, redis.Redis.from_url(valkey_url), (SERVICE_NAME,))
    assert probe.check()
    for name in ("", SERVICE_NAME):
        assert status(servicer, name) == health_pb2.HealthCheckResponse.SERVING
    probe.stop()


def test_health_turns_not_serving_within_the_probe_timeout_when_redis_is_gone() -> None:
    with socket.socket() as listener:  # a port that accepts connections but never answers: a hung Redis
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        servicer = health.HealthServicer()
        probe = RedisHealth(servicer, redis.Redis(port=port), (SERVICE_NAME,), timeout_s=0.3)
        probe.set_serving(True)
        start = time.monotonic()
        assert not probe.check()
        assert time.monotonic() - start < 1.0
        for name in ("", SERVICE_NAME):
            assert status(servicer, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        probe.stop()
