"""The client's trace context reaches the server span and rides inside the queued prompt."""

from __future__ import annotations

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from policyopt.client import RunHandle
from policyopt.core.types import PromptTask, from_json
from policyopt.state.queue import prompts_stream


def _install_memory_exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_submit_prompts_joins_the_callers_trace_and_stores_it_in_the_task(
    run_a: RunHandle, redis_client: redis.Redis
) -> None:
    exporter = _install_memory_exporter()
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        [prompt_id] = run_a.submit_prompts(["What is 2 + 2?"])
    trace_id = caller.get_span_context().trace_id
    server_spans = [
        s
        for s in exporter.get_finished_spans()
        if s.name.endswith("SubmitPrompts") and s.kind == trace.SpanKind.SERVER
    ]
    assert server_spans and server_spans[-1].context.trace_id == trace_id
    tasks = [
        from_json(PromptTask, fields[b"data"])
        for _, fields in redis_client.xrange(prompts_stream(run_a.run_id))
    ]
    [task] = [t for t in tasks if t.prompt_id == prompt_id]
    assert f"{trace_id:032x}" in task.trace["traceparent"]
