"""Building and running the gRPC server (servicer, interceptors, health checking, reflection) and, beside it,
the HTTP port: the run dashboard and ``/metrics``."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
from concurrent import futures
from types import FrameType, TracebackType

import grpc
import redis
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from policyopt.client.tls import server_credentials
from policyopt.core.errors import InvalidArgument
from policyopt.core.metrics import http_host, register_server_collector
from policyopt.core.settings import Settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.server.dashboard import HttpServer, build_app
from policyopt.server.health import RedisHealth
from policyopt.server.interceptors import server_interceptors
from policyopt.server.limits import LimitsInterceptor, ThreadPlan
from policyopt.server.servicer import PolicyOptimizerServicer
from policyopt.state import connect
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyOptimizer"].full_name
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class PolicyOptServer:
    """A built server: ``start()``, ``port``/``address`` once bound, ``stop(grace)``; a context manager."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        r: redis.Redis,
        health_servicer: health.HealthServicer,
        limits: LimitsInterceptor | None = None,
    ):
        self.server = server
        self.port = port
        self.host = host
        self._redis = r
        self._health = health_servicer
        self._stopped = threading.Event()
        self.limits = limits  # the per-tenant slots: what each tenant holds open now
        self._health_probe = RedisHealth(health_servicer, r, (SERVICE_NAME,))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def start(self) -> PolicyOptServer:
        self.server.start()
        self._health_probe.start()
        log.info("policyopt server listening on %s", self.address)
        return self

    def _set_serving(self, serving: bool) -> None:
        self._health_probe.set_serving(serving)

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds, then cancel them."""
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self._health_probe.stop()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()

    def __enter__(self) -> PolicyOptServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(grace=1.0)


def server_tls(settings: Settings) -> grpc.ServerCredentials | None:
    """The TLS credentials of ``POLICYOPT_TLS_CERT``/``_KEY`` (and ``_CLIENT_CA``: mutual TLS); None: plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise InvalidArgument("POLICYOPT_TLS_CLIENT_CA needs POLICYOPT_TLS_CERT and POLICYOPT_TLS_KEY")
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "serving plaintext on %s: API keys and prompts cross the network in clear; "
                "set POLICYOPT_TLS_CERT and POLICYOPT_TLS_KEY",
                settings.host,
            )
        return None
    if not settings.tls_cert or not settings.tls_key:
        raise InvalidArgument("set both POLICYOPT_TLS_CERT and POLICYOPT_TLS_KEY to serve TLS, or neither")
    return server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)


def build_server(
    settings: Settings,
    *,
    r: redis.Redis | None = None,
    max_workers: int | None = None,
    poll_ms: int = 1000,
) -> PolicyOptServer:
    """A server on ``settings.host:settings.port`` (port 0 picks a free one), not yet started.

    ``max_workers`` threads serve calls (default: ``ThreadPlan.for_settings``); half of them at most hold
    streams, and grpc refuses calls beyond them with RESOURCE_EXHAUSTED instead of queueing (``limits``).
    """
    credentials = server_tls(settings)  # before anything starts: a bad file fails here, with its name
    r = r if r is not None else connect(settings)
    if not settings.api_keys:
        log.warning(
            "POLICYOPT_API_KEYS is empty: auth is off and every caller is tenant 'default' (local use only)"
        )
    plan = ThreadPlan.for_settings(settings, max_workers)
    limits = LimitsInterceptor(settings, plan)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=plan.pool, thread_name_prefix="policyopt-rpc"),
        interceptors=server_interceptors(settings.api_keys, settings.reflection_public, limits),
        options=[
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.max_receive_message_length", settings.max_request_mb << 20),
        ],
        maximum_concurrent_rpcs=plan.pool,
    )
    servicer = PolicyOptimizerServicer(settings, r, poll_ms=poll_ms)
    pb_grpc.add_PolicyOptimizerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}; is another server on that port?")
    built = PolicyOptServer(server, port, settings.host, r, health_servicer, limits)
    built._set_serving(True)
    return built


def build_http_server(settings: Settings, r: redis.Redis) -> HttpServer | None:
    """The dashboard and ``/metrics`` on ``http_host`` (default ``host``) : ``http_port``, bound, not yet
    started; port 0 picks a free one (``.port``); None when ``http_port`` is -1 (HTTP off)."""
    if settings.http_port < 0:
        return None
    host = http_host(settings)
    if not settings.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the dashboard on %s has no API keys: anyone who reaches it sees every run", host)
    return HttpServer(build_app(settings, r), host, settings.http_port)


def return_large_buffers_to_the_os() -> None:
    """Serve allocations of 1 MiB and more with mmap, so a large request's memory goes back when freed.

    glibc raises its mmap threshold after each large free (up to 32 MiB); later request-sized buffers then
    come from the per-thread arenas, which keep them: with dozens of pool threads the server's RSS crept up
    by about one large request per arena. A fixed threshold turns that adjustment off (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # musl or another libc: keep its own policy
        log.debug("mallopt unavailable; large request buffers follow the libc's policy")


def serve(settings: Settings, grace_s: float = 10.0) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully. Prints the bound gRPC and HTTP addresses."""
    return_large_buffers_to_the_os()
    setup_telemetry(settings, "policyopt-server")
    running = build_server(settings)
    http = build_http_server(settings, running.redis)  # binds now: a taken port fails before serving
    register_server_collector(running.redis)
    running.start()
    tls = ("mutual TLS" if settings.tls_client_ca else "TLS") if settings.tls_cert else "plaintext"
    print(f"policyopt server listening on {running.address} ({tls})", flush=True)
    if http is not None:
        http.start()
        print(f"policyopt dashboard and /metrics on {http.url} (plaintext HTTP)", flush=True)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping (grace %.0fs)", signum, grace_s)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    if http is not None:
        http.stop()
    running.stop(grace_s)
