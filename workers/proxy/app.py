"""The proxy's HTTP surface: an OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` for one run.

Auth is the service's: the tenant's API key as ``Authorization: Bearer KEY`` (what the OpenAI SDK sends
as ``api_key``), resolved by ``core.api_keys`` like the gRPC ``AuthInterceptor`` does; the run must be
that tenant's. Errors come back in OpenAI's shape, ``{"error": {"message", "type", "code"}}``, with the
HTTP status of the domain error (``STATUSES``). Replies carry ``x-policyopt-version`` (the adapter version
that sampled) and ``x-policyopt-engine-ms`` (the engine's own time, for the overhead benchmark).
"""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from policyopt.core.api_keys import DEFAULT_TENANT, api_key_from, tenant_for_key
from policyopt.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyOptError,
    ResourceExhausted,
    Unauthenticated,
)
from policyopt.workers.proxy.completions import ChatCompletions

log = logging.getLogger(__name__)

SESSION_HEADER = "x-policyopt-session"
MAX_BODY_BYTES = 8 << 20
"""Largest request body (a long agent history with tool results)."""
STATUSES: dict[type[PolicyOptError], tuple[int, str]] = {
    InvalidArgument: (400, "invalid_request_error"),
    Unauthenticated: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    FailedPrecondition: (409, "failed_precondition"),
    ResourceExhausted: (429, "rate_limit_error"),
}


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _from_domain(exc: PolicyOptError) -> JSONResponse:
    status, kind = next(
        ((s, k) for cls, (s, k) in STATUSES.items() if isinstance(exc, cls)), (503, "unavailable")
    )
    return _error(status, kind, str(exc))


class ProxyRoutes:
    """Route handlers over one ``ChatCompletions``; ``api_keys`` as in ``Settings.api_keys``."""

    def __init__(self, completions: ChatCompletions, api_keys: dict[str, str]) -> None:
        self.completions = completions
        self.api_keys = dict(api_keys)

    def tenant(self, request: Request) -> str:
        """The caller's tenant from its bearer token; Unauthenticated with what to send otherwise."""
        if not self.api_keys:
            return DEFAULT_TENANT
        key = api_key_from({k.lower(): v for k, v in request.headers.items()})
        if not key:
            raise Unauthenticated(
                "no API key: pass the tenant's key as the OpenAI client's api_key (a bearer token)"
            )
        tenant = tenant_for_key(self.api_keys, key)
        if tenant is None:
            raise Unauthenticated(
                "API key not recognised: check the key against POLICYOPT_API_KEYS on the server"
            )
        return tenant

    async def chat_completions(self, request: Request) -> JSONResponse:
        try:
            tenant = self.tenant(request)
            body = await _json_body(request)
            if body.get("stream"):
                raise InvalidArgument(
                    "stream=true is not supported by the policyopt proxy; send stream=false"
                )
            if body.get("n", 1) != 1:
                raise InvalidArgument("n must be 1: each call of an episode samples one reply")
            session = request.headers.get(SESSION_HEADER, "")
            completion = await run_in_threadpool(self.completions.complete, body, session, tenant)
        except PolicyOptError as exc:
            return _from_domain(exc)
        headers = {
            "x-policyopt-version": str(completion.version),
            "x-policyopt-engine-ms": f"{completion.engine_seconds * 1000:.3f}",
        }
        return JSONResponse(completion.body, headers=headers)

    async def models(self, request: Request) -> JSONResponse:
        try:
            run = await run_in_threadpool(self.completions.run, self.tenant(request))
        except PolicyOptError as exc:
            return _from_domain(exc)
        model = {"id": run.run_id, "object": "model", "created": int(run.created_at), "owned_by": run.tenant}
        return JSONResponse({"object": "list", "data": [model]})


async def _json_body(request: Request) -> dict[str, object]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidArgument(f"the request body is {len(raw)} bytes; send at most {MAX_BODY_BYTES}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def build_proxy_app(completions: ChatCompletions, api_keys: dict[str, str]) -> Starlette:
    """The proxy's ASGI app."""
    routes = ProxyRoutes(completions, api_keys)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
        ]
    )


__all__ = ["SESSION_HEADER", "STATUSES", "ProxyRoutes", "build_proxy_app"]
