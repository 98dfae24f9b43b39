"""Optional client spans: only when opentelemetry is importable; the SDK never requires it.

Each call gets a CLIENT span, and its W3C trace context rides in the call metadata so the server's
span (and everything downstream) joins the caller's trace.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

import grpc


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: list[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


def available() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def _with_trace_context(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata = list(details.metadata or ()) + list(carrier.items())
    return _ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials,
        details.wait_for_ready, details.compression,
    )  # fmt: skip


class TracingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """A client span per call (it covers sending the call; streams are followed by the server span)."""

    def _traced(
        self, continuation: Callable[..., object], details: grpc.ClientCallDetails, request: object
    ) -> object:
        from opentelemetry import trace

        tracer = trace.get_tracer("policyopt.client")
        with tracer.start_as_current_span(str(details.method).lstrip("/"), kind=trace.SpanKind.CLIENT):
            return continuation(_with_trace_context(details), request)

    def intercept_unary_unary(
        self, continuation: Callable[..., object], details: grpc.ClientCallDetails, request: object
    ) -> object:
        return self._traced(continuation, details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., object], details: grpc.ClientCallDetails, request: object
    ) -> object:
        return self._traced(continuation, details, request)


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with client spans when opentelemetry is installed, else unchanged."""
    return grpc.intercept_channel(channel, TracingInterceptor()) if available() else channel


def trace_metadata() -> list[tuple[str, str]]:
    """The current trace context as call metadata (for the asyncio client); empty without opentelemetry."""
    if not available():
        return []
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())
