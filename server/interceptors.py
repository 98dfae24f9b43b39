"""Server interceptors, outermost first: metrics -> auth -> limits -> telemetry -> errors.

- ``MetricsInterceptor`` counts each call by method and status code and times it (``core.metrics``);
  outermost, so refusals by auth and limits are counted too. Streams count when they end.
- ``AuthInterceptor`` maps the API key (``x-api-key`` or ``authorization: Bearer KEY``) to a tenant
  and binds it to ``current_tenant()`` for the handler; a missing or wrong key is UNAUTHENTICATED.
  Health checking is open to probes; reflection needs a key unless ``reflection_public`` opens it.
- ``limits.LimitsInterceptor`` (its own module) holds each tenant to its open streams and concurrent calls.
- ``TelemetryInterceptor`` opens a server span, parented on the caller's W3C trace context.
- ``ErrorInterceptor`` is the one place where exceptions become statuses (``server.errors``). It also
  decodes requests itself, so bytes that are not a valid message (invalid UTF-8, nesting past protobuf's
  limit) are INVALID_ARGUMENT instead of grpc's INTERNAL "Exception deserializing request!".

grpc runs interceptors on its polling thread and handlers on the pool, so each interceptor wraps the
handler's behavior instead of acting in ``intercept_service`` itself.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
from opentelemetry import propagate, trace

from policyopt.core.api_keys import DEFAULT_TENANT, api_key_from, tenant_for_key
from policyopt.core.errors import InvalidArgument, Unauthenticated
from policyopt.core.metrics import RPC_DURATION, RPC_REQUESTS
from policyopt.core.telemetry import tracer
from policyopt.server.errors import abort_with

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]
# (behavior, response_streaming) -> wrapped behavior
Wrapper = Callable[[Callable[..., object], bool], Callable[..., object]]

HEALTH_METHOD_PREFIX = "/grpc.health.v1."
REFLECTION_METHOD_PREFIX = "/grpc.reflection."

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("policyopt_tenant")


def current_tenant() -> str:
    """The tenant of the call being handled (set by ``AuthInterceptor``)."""
    return _tenant.get()


def tenant_or_none() -> str | None:
    """The tenant of the call being handled; None for calls open without a key (health, reflection)."""
    return _tenant.get(None)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Wrapper,
    request_deserializer: Callable[[bytes], object] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior replaced by ``wrap(behavior, response_streaming)`` (and its
    request deserializer by ``request_deserializer`` when given)."""
    codecs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **codecs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **codecs)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _run_in(
    ctx: contextvars.Context, behavior: Callable[..., object], streaming: bool
) -> Callable[..., object]:
    """Run ``behavior`` (and every step of its response stream) inside ``ctx``."""
    if not streaming:
        return lambda request, context: ctx.run(behavior, request, context)

    def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
        iterator = ctx.run(behavior, request, context)
        try:
            while True:
                try:
                    item: object = ctx.run(next, iterator)  # type: ignore[arg-type]
                except StopIteration:
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                ctx.run(close)

    return stream


class AuthInterceptor(grpc.ServerInterceptor):
    """API key -> tenant. With no keys configured every call is tenant ``default``.

    Health checking needs no key (load balancers and probes carry none); reflection, which lists every
    method and message, needs one unless ``reflection_public``.
    """

    def __init__(self, api_keys: dict[str, str], reflection_public: bool = False) -> None:
        self._api_keys = dict(api_keys)
        self._open_prefixes = (HEALTH_METHOD_PREFIX,) + (
            (REFLECTION_METHOD_PREFIX,) if reflection_public else ()
        )

    def tenant_for(self, key: str) -> str | None:
        return tenant_for_key(self._api_keys, key)

    def _check(self, details: grpc.HandlerCallDetails) -> str:
        if not self._api_keys:
            return DEFAULT_TENANT
        key = api_key_from(_metadata(details))
        if not key:
            raise Unauthenticated(
                "no API key: send it in the `x-api-key` metadata (or `authorization: Bearer KEY`)"
            )
        tenant = self.tenant_for(key)
        if tenant is None:
            raise Unauthenticated(
                "API key not recognised: check the key against POLICYOPT_API_KEYS on the server"
            )
        return tenant

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(self._open_prefixes):
            return handler
        try:
            tenant = self._check(details)
        except Unauthenticated as exc:
            rejection = exc
            return wrap_handler(handler, lambda _b, streaming: _rejecting(rejection, streaming))
        ctx = contextvars.copy_context()
        ctx.run(_tenant.set, tenant)
        return wrap_handler(handler, lambda behavior, streaming: _run_in(ctx, behavior, streaming))


def _rejecting(exc: Unauthenticated, streaming: bool) -> Callable[..., object]:
    def reject(_request: object, context: grpc.ServicerContext) -> object:
        abort_with(context, exc)
        return None

    def reject_stream(_request: object, context: grpc.ServicerContext) -> Iterator[object]:
        abort_with(context, exc)
        yield from ()

    return reject_stream if streaming else reject


class MetricsInterceptor(grpc.ServerInterceptor):
    """``policyopt_rpc_requests_total{method,code}`` and ``policyopt_rpc_duration_seconds{method}`` per call.

    ``method`` is ``Service/Method`` of a registered handler (unknown methods are not counted, so the
    label stays bounded); ``code`` is the status name the call ended with.
    """

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit(".", 1)[-1]  # /policyopt.v1.Svc/Method -> Svc/Method

        def wrap(behavior: Callable[..., object], streaming: bool) -> Callable[..., object]:
            def unary(request: object, context: grpc.ServicerContext) -> object:
                started = time.perf_counter()
                code = "UNKNOWN"
                try:
                    response = behavior(request, context)
                    code = _status_name(context, "OK")
                    return response
                except BaseException:
                    code = _status_name(context, "UNKNOWN")
                    raise
                finally:
                    _observe(method, code, started)

            def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
                started = time.perf_counter()
                code = "UNKNOWN"
                try:
                    yield from behavior(request, context)  # type: ignore[misc]
                    code = _status_name(context, "OK")
                except GeneratorExit:  # the caller went away (cancelled) or the server stopped mid-stream
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _status_name(context, "UNKNOWN")
                    raise
                finally:
                    _observe(method, code, started)

            return stream if streaming else unary

        return wrap_handler(handler, wrap)


def _status_name(context: grpc.ServicerContext, default: str) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


def _observe(method: str, code: str, started: float) -> None:
    RPC_REQUESTS.labels(method, code).inc()
    RPC_DURATION.labels(method).observe(time.perf_counter() - started)


class TelemetryInterceptor(grpc.ServerInterceptor):
    """A server span per call, parented on the trace context in the call's metadata."""

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return handler
        carrier = _metadata(details)
        name = details.method.lstrip("/")

        def wrap(behavior: Callable[..., object], streaming: bool) -> Callable[..., object]:
            def unary(request: object, context: grpc.ServicerContext) -> object:
                with _server_span(name, carrier):
                    return behavior(request, context)

            def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
                with _server_span(name, carrier):
                    yield from behavior(request, context)  # type: ignore[misc]

            return stream if streaming else unary

        return wrap_handler(handler, wrap)


def _server_span(name: str, carrier: dict[str, str]) -> trace.Span:
    attributes = {"rpc.system": "grpc", "rpc.method": name}
    return tracer("policyopt.server").start_as_current_span(  # type: ignore[return-value]
        name, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER, attributes=attributes
    )


class ErrorInterceptor(grpc.ServerInterceptor):
    """Exceptions raised by handlers -> gRPC statuses, via ``server.errors.abort_with``; requests that
    do not decode -> INVALID_ARGUMENT."""

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method, request_streaming = details.method, handler.request_streaming

        def wrap(behavior: Callable[..., object], streaming: bool) -> Callable[..., object]:
            return _mapping_errors(_refusing_malformed(behavior, request_streaming), streaming)

        return wrap_handler(handler, wrap, _decoding(handler.request_deserializer, method))


class MalformedRequest:
    """What a request that failed to decode becomes: grpc would answer INTERNAL for a decoder that
    raises, so the decoder returns this and the handler refuses it with INVALID_ARGUMENT."""

    def __init__(self, method: str, exc: Exception) -> None:
        self.error = InvalidArgument(
            f"the request to {method} is not a valid message ({type(exc).__name__}: {str(exc)[:80]}); "
            "build it from the service's .proto: string fields must be valid UTF-8, and messages and Structs "
            "nest at most 100 levels deep"
        )


def _decoding(
    deserializer: Callable[[bytes], object] | None, method: str
) -> Callable[[bytes], object] | None:
    if deserializer is None:
        return None
    decode = deserializer

    def decode_or_mark(data: bytes) -> object:
        try:
            return decode(data)
        except Exception as exc:  # DecodeError, RecursionError, ValueError: all the caller's bytes
            return MalformedRequest(method, exc)

    return decode_or_mark


def _refusing_malformed(behavior: Callable[..., object], request_streaming: bool) -> Callable[..., object]:
    def checked_stream(requests: Iterator[object]) -> Iterator[object]:
        for request in requests:
            if isinstance(request, MalformedRequest):
                raise request.error
            yield request

    def handle(request: object, context: grpc.ServicerContext) -> object:
        if request_streaming:
            return behavior(checked_stream(request), context)  # type: ignore[arg-type]
        if isinstance(request, MalformedRequest):
            raise request.error
        return behavior(request, context)

    return handle


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def _mapping_errors(behavior: Callable[..., object], streaming: bool) -> Callable[..., object]:
    def unary(request: object, context: grpc.ServicerContext) -> object:
        try:
            return behavior(request, context)
        except Exception as exc:
            if _already_aborted(context):
                raise
            abort_with(context, exc)
            raise  # unreachable: abort_with raises

    def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
        try:
            yield from behavior(request, context)  # type: ignore[misc]
        except Exception as exc:
            if _already_aborted(context):
                raise
            abort_with(context, exc)

    return stream if streaming else unary


def server_interceptors(
    api_keys: dict[str, str],
    reflection_public: bool = False,
    limits: grpc.ServerInterceptor | None = None,
) -> Sequence[grpc.ServerInterceptor]:
    """The interceptor chain in order: metrics -> auth -> limits (when given) -> telemetry -> errors."""
    auth = AuthInterceptor(api_keys, reflection_public)
    return (
        MetricsInterceptor(),
        auth,
        *([limits] if limits else []),
        TelemetryInterceptor(),
        ErrorInterceptor(),
    )
