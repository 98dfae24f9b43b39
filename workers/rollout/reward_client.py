"""Calls a user's RewardService: one ``Score`` per group, with a deadline and retries.

This module is the rollout worker's only protobuf edge: it takes and returns plain Python values.
Every failure leaves it as ``RewardEndpointError`` with a message that says what to fix.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2

from policyopt.core.errors import RewardEndpointError
from policyopt.core.settings import Settings
from policyopt.core.types import JSONValue, RewardEndpointInfo
from policyopt.v1 import reward_pb2, reward_pb2_grpc

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
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

    def __init__(self, settings: Settings, *, backoff_s: float = 0.25, max_backoff_s: float = 4.0) -> None:
        self.timeout_s = settings.reward_timeout_s
        self.retries = settings.reward_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def score(self, endpoint: RewardEndpointInfo, group: ScoreInput) -> list[float]:
        """One finite score per completion; RewardEndpointError when the endpoint cannot give them."""
        request = _to_request(group)
        timeout_s = endpoint.timeout_s or self.timeout_s
        response = self._call_with_retries(endpoint, request, timeout_s)
        return _check_scores(endpoint, list(response.scores), len(group.completions))

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def _stub(self, address: str) -> reward_pb2_grpc.RewardServiceStub:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            return reward_pb2_grpc.RewardServiceStub(self._channels[address])

    def _call_with_retries(
        self, endpoint: RewardEndpointInfo, request: reward_pb2.ScoreRequest, timeout_s: float
    ) -> reward_pb2.ScoreResponse:
        attempts = 1 + max(0, self.retries)
        for attempt in range(attempts):
            try:
                response: reward_pb2.ScoreResponse = self._stub(endpoint.address).Score(
                    request, timeout=timeout_s
                )
                return response
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code not in TRANSIENT_CODES:
                    raise _permanent_error(endpoint, code, details) from exc
                if attempt + 1 == attempts:
                    raise _exhausted_error(endpoint, code, details, attempts, timeout_s) from exc
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                log.warning("reward endpoint %s: %s (%s); retry %d in %.2fs", endpoint.name, code.name, details,
                            attempt + 1, delay)  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable")


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


def _check_scores(endpoint: RewardEndpointInfo, scores: list[float], expected: int) -> list[float]:
    if len(scores) != expected:
        raise RewardEndpointError(
            f"reward endpoint {endpoint.name!r} returned {len(scores)} scores for {expected} completions; "
            "Score must return exactly one score per completion, in order"
        )
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        shown = ", ".join(f"#{i}={scores[i]}" for i in bad[:5])
        raise RewardEndpointError(
            f"reward endpoint {endpoint.name!r} returned non-finite scores ({shown}); "
            "return a finite float for every completion (map failures to a low score, not NaN or inf)"
        )
    return [float(s) for s in scores]


def _permanent_error(
    endpoint: RewardEndpointInfo, code: grpc.StatusCode, details: str | None
) -> RewardEndpointError:
    return RewardEndpointError(
        f"reward endpoint {endpoint.name!r} at {endpoint.address} failed with {code.name}: {details or 'no details'}; "
        "fix the reward function (its traceback is in the endpoint's log)"
    )


def _exhausted_error(
    endpoint: RewardEndpointInfo, code: grpc.StatusCode, details: str | None, attempts: int, timeout_s: float
) -> RewardEndpointError:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        hint = (
            f"each call ran past its {timeout_s:g}s deadline; make the reward function faster or register the "
            "endpoint with a longer timeout"
        )
    else:
        hint = "check that the reward server is running and its registered address is reachable from the rollout worker"
    return RewardEndpointError(
        f"reward endpoint {endpoint.name!r} at {endpoint.address} failed {attempts} times ({code.name}: "
        f"{details or 'no details'}); {hint}",
        transient=True,
    )


__all__ = ["TRANSIENT_CODES", "RewardClient", "ScoreInput"]
