"""Container health check for every policyopt role (the image's HEALTHCHECK).

The server answers gRPC ``grpc.health.v1.Health/Check`` on ``POLICYOPT_PORT`` (NOT_SERVING while its
Redis is unreachable); workers have no gRPC port, so when nothing listens there the process's HTTP
``/metrics`` on ``POLICYOPT_HTTP_PORT`` answers instead. Exit 0: healthy, 1: not.
"""

from __future__ import annotations

import os
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def grpc_status(port: int) -> bool | None:
    """True/False: the server's health; None: nothing answers gRPC on the port."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def metrics_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def main() -> int:
    serving = grpc_status(int(os.environ.get("POLICYOPT_PORT", "50051")))
    if serving is not None:
        return 0 if serving else 1
    http_port = int(os.environ.get("POLICYOPT_HTTP_PORT", "8080"))
    return 0 if http_port > 0 and metrics_ok(http_port) else 1


if __name__ == "__main__":
    sys.exit(main())
