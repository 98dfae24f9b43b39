"""Calls a user's RewardService: one ``Score`` per group, with a deadline, quick retries and a circuit breaker.

This module is the rollout worker's only protobuf edge: it takes and returns plain Python values.
Every failure leaves it as ``RewardEndpointError`` with a message that says what to fix, marked
``transient`` (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, connection failures, an
open circuit: the worker retries the prompt later) or permanent (INVALID_ARGUMENT and every other status,
a wrong number of scores, non-finite scores, bad components (``reward_components``): the prompt ends
with an ERROR event).

Each endpoint address has a ``CircuitBreaker``: after ``FAILURE_THRESHOLD`` transient failures in a row
its calls fail fast (``circuit_open``) for ``COOLDOWN_S``, then one trial call decides.

The endpoint is a tenant's address, so its replies are not trusted: the address passes the outbound policy
again before each connection (``core.outbound``; the channel goes to the checked IP, so DNS rebinding cannot
move it), and a failed call becomes one message written here, whatever the endpoint answered. A closed
port, an HTTP server, a Redis and a gRPC server without RewardService look the same to the tenant; the
status and its details go to this worker's log only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2

from policyopt.core.errors import RewardEndpointError
from policyopt.core.metrics import REWARD_CALL_DURATION, REWARD_CALL_ERRORS, REWARD_CALL_RETRIES
from policyopt.core.outbound import OutboundPolicy, connect_target, split_host_port
from policyopt.core.settings import Settings
from policyopt.core.types import JSONValue, RewardEndpointInfo
from policyopt.v1 import reward_pb2, reward_pb2_grpc
from policyopt.workers.rollout.breaker import COOLDOWN_S, FAILURE_THRESHOLD, CircuitBreaker
from policyopt.workers.rollout.reward_components import ScoredGroup, combine

log = logging.getLogger(__name__)

# UNIMPLEMENTED (a gRPC server without RewardService) is retried like a closed port, so the two take as long.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
RESOLVE_EVERY_S = 30.0
"""How long a checked address is used before the endpoint's host is resolved and checked again."""
# Reconnect quickly after an endpoint restarts instead of sitting in gRPC's default 1-120 s backoff.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class ScoreInput:
    """One group to score: the prompt and its completions, in order."""

    run_id: str
    prompt_id: str
    prompt: str
    completions: list[str]
    metadata: dict[str, JSONValue] = field(default_factory=dict)
    adapter_version: int = 0


class RewardClient:
    """Scores groups against registered endpoints; channels are cached per address and thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
        breaker_threshold: int = FAILURE_THRESHOLD,
        breaker_cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self.timeout_s = settings.reward_timeout_s
        self.retries = settings.reward_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown_s = breaker_cooldown_s
        self._breakers: dict[str, CircuitBreaker] = {}
        self._channels: dict[tuple[str, str, bool, str], grpc.Channel] = {}
        self._targets: dict[str, tuple[str, float]] = {}  # address -> (checked ip:port, when)
        self._lock = threading.Lock()
        self.outbound = OutboundPolicy.from_settings(settings)

    def score(self, endpoint: RewardEndpointInfo, group: ScoreInput) -> list[float]:
        """One finite score per completion; RewardEndpointError when the endpoint cannot give them."""
        return self.score_group(endpoint, group).totals

    def score_group(self, endpoint: RewardEndpointInfo, group: ScoreInput) -> ScoredGroup:
        """The group's totals and named components (``reward_components.combine``)."""
        request = _to_request(group)
        timeout_s = endpoint.timeout_s or self.timeout_s
        breaker = self.breaker(endpoint)
        if not breaker.allow():
            REWARD_CALL_ERRORS.labels(endpoint.address, "CIRCUIT_OPEN").inc()
            raise RewardEndpointError(
                f"reward endpoint {endpoint.name!r} at {endpoint.address} failed {breaker.threshold} times in "
                f"a row; calls to it pause for {breaker.cooldown_s:g}s",
                circuit_open=True,
                retry_after_s=breaker.retry_in(),
            )
        try:
            response = self._call_with_retries(endpoint, request, timeout_s)
        except RewardEndpointError as exc:
            if exc.transient:
                breaker.record_failure()
            else:
                breaker.record_success()  # it answered with an error status: it is up
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.record_success()  # it answered; whether the answer is usable is checked next
        try:
            components = {c.name: list(c.values) for c in response.components}
            if len(components) != len(response.components):
                raise RewardEndpointError(
                    f"reward endpoint {endpoint.name!r} returned a reward component name twice; name each once"
                )
            return combine(
                endpoint.name,
                list(response.scores),
                components,
                dict(response.weights),
                len(group.completions),
            )
        except RewardEndpointError:
            REWARD_CALL_ERRORS.labels(endpoint.address, "BAD_SCORES").inc()
            raise

    def breaker(self, endpoint: RewardEndpointInfo) -> CircuitBreaker:
        """The endpoint's circuit breaker, one per address (shared by the tenants that register it)."""
        with self._lock:
            if endpoint.address not in self._breakers:
                self._breakers[endpoint.address] = CircuitBreaker(
                    self.breaker_threshold, self.breaker_cooldown_s
                )
            return self._breakers[endpoint.address]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def _stub(self, endpoint: RewardEndpointInfo) -> reward_pb2_grpc.RewardServiceStub:
        target = self._target(endpoint)
        # re-registering with a new CA, or the host resolving elsewhere: a new channel
        key = (endpoint.address, target, endpoint.tls, endpoint.tls_ca)
        with self._lock:
            if key not in self._channels:
                self._channels[key] = _open_channel(endpoint, target)
            return reward_pb2_grpc.RewardServiceStub(self._channels[key])

    def _target(self, endpoint: RewardEndpointInfo) -> str:
        """The checked ``ip:port`` to connect to; PermissionDenied when the policy refuses the address now."""
        with self._lock:
            cached = self._targets.get(endpoint.address)
        if cached is not None and time.monotonic() - cached[1] < RESOLVE_EVERY_S:
            return cached[0]
        host, port = split_host_port(endpoint.address)
        ip = self.outbound.connect_host(host, port, f"reward endpoint {endpoint.name!r}")
        target = connect_target(ip, port)
        with self._lock:
            self._targets[endpoint.address] = (target, time.monotonic())
            for key in [k for k in self._channels if k[0] == endpoint.address and k[1] != target]:
                self._channels.pop(key).close()
        return target

    def _call_with_retries(
        self, endpoint: RewardEndpointInfo, request: reward_pb2.ScoreRequest, timeout_s: float
    ) -> reward_pb2.ScoreResponse:
        attempts = 1 + max(0, self.retries)
        timer = REWARD_CALL_DURATION.labels(endpoint.address)
        for attempt in range(attempts):
            stub = self._stub(endpoint)
            started = time.monotonic()
            try:
                response: reward_pb2.ScoreResponse = stub.Score(request, timeout=timeout_s)
                timer.observe(time.monotonic() - started)
                return response
            except grpc.RpcError as exc:
                timer.observe(time.monotonic() - started)
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code not in TRANSIENT_CODES or attempt + 1 == attempts:
                    REWARD_CALL_ERRORS.labels(endpoint.address, code.name).inc()
                    log.warning("reward endpoint %s at %s failed after %d attempts: %s (%s)", endpoint.name,
                                endpoint.address, attempt + 1, code.name, details)  # fmt: skip
                    raise _call_error(endpoint, timeout_s, transient=code in TRANSIENT_CODES) from exc
                REWARD_CALL_RETRIES.labels(endpoint.address).inc()
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                log.warning("reward endpoint %s: %s (%s); retry %d in %.2fs", endpoint.name, code.name, details,
                            attempt + 1, delay)  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable")


def _open_channel(endpoint: RewardEndpointInfo, target: str = "") -> grpc.Channel:
    """A channel to ``target`` (default: the endpoint's address): TLS for endpoints registered with
    ``tls``, verified against their CA (else the system roots) and always for the registered host name,
    also when ``target`` is the address that name was checked to resolve to."""
    target = target or endpoint.address
    if not endpoint.tls:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    options: list[tuple[str, int | str]] = [*_CHANNEL_OPTIONS]
    if target != endpoint.address:
        host = endpoint.address.rsplit(":", 1)[0].strip("[]")
        options.append(("grpc.ssl_target_name_override", host))
    credentials = grpc.ssl_channel_credentials(root_certificates=endpoint.tls_ca.encode() or None)
    return grpc.secure_channel(target, credentials, options=options)


def _to_request(group: ScoreInput) -> reward_pb2.ScoreRequest:
    metadata = struct_pb2.Struct()
    try:
        metadata.update(group.metadata)
    except (ValueError, TypeError) as exc:
        raise RewardEndpointError(
            f"prompt {group.prompt_id} has metadata that is not JSON-like: {exc}"
        ) from exc
    return reward_pb2.ScoreRequest(
        run_id=group.run_id,
        prompt_id=group.prompt_id,
        prompt=group.prompt,
        completions=group.completions,
        metadata=metadata,
        adapter_version=group.adapter_version,
    )


def _call_error(endpoint: RewardEndpointInfo, timeout_s: float, *, transient: bool) -> RewardEndpointError:
    """One message for every failed call, written here: nothing the endpoint sent reaches the tenant."""
    tls = ", is not serving TLS with a certificate for its address that the registered tls_ca signed"
    tls = tls if endpoint.tls else ""
    return RewardEndpointError(
        f"reward endpoint {endpoint.name!r} at {endpoint.address} could not score the group: it is unreachable "
        f"from the rollout workers, is not a policyopt.v1.RewardService{tls}, ran past its {timeout_s:g}s "
        "deadline, or its reward function failed; the endpoint's own log shows which (a slow reward function: "
        "register the endpoint with a longer timeout)",
        transient=transient,
    )


__all__ = ["TRANSIENT_CODES", "RewardClient", "ScoreInput"]
