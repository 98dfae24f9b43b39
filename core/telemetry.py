"""OpenTelemetry setup and trace-context propagation through Redis messages.

Off by default (``POLICYOPT_TELEMETRY=off``): the API's no-op tracer is used and spans cost nothing.
``console`` prints finished spans; ``otlp`` exports to ``OTEL_EXPORTER_OTLP_ENDPOINT`` over gRPC.
The trace context rides in ``PromptTask.trace`` and ``TrajectoryGroup.trace`` (a W3C traceparent
carrier), so one trace shows SubmitPrompts -> rollout -> reward call -> train step -> publish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span

from policyopt.core.settings import Settings

log = logging.getLogger(__name__)
_configured = False


def setup_telemetry(settings: Settings, service_name: str) -> None:
    """Install a tracer provider for this process according to ``settings.telemetry``."""
    global _configured
    if _configured or settings.telemetry == "off":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if settings.telemetry == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif settings.telemetry == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint or None)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        raise ValueError(f"POLICYOPT_TELEMETRY must be off, console or otlp, not {settings.telemetry!r}")
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(name: str = "policyopt") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier dict to store inside a Redis message."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def span_from(carrier: dict[str, str] | None, name: str, **attributes: str | int | float) -> Iterator[Span]:
    """Start a span whose parent is the context stored in ``carrier`` (a message's ``trace`` field)."""
    parent = propagate.extract(carrier or {})
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)
