"""The dashboard's routes: login/logout, the runs list, a run's page, its JSON API and adapter downloads.

Every route but ``/login``, ``/static`` and ``/metrics`` resolves the session cookie's key to a tenant; a
run of another tenant is the same 404 as an unknown one. ``/metrics`` (Prometheus) needs no key, as
scrapers carry none: it holds counters and gauges, never run content.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs

import redis
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyopt.core.errors import InvalidArgument, NotFound
from policyopt.core.identifiers import event_id, is_plain_file_name
from policyopt.core.settings import Settings
from policyopt.server.dashboard import pages, views
from policyopt.server.dashboard.archive import tar_gz_chunks
from policyopt.server.dashboard.auth import DashboardAuth
from policyopt.state.adapter_manifest import MANIFEST_FILE
from policyopt.state.adapter_store import LocalAdapterStore
from policyopt.state.runs import RunStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
LOGIN_BODY_LIMIT = 4096
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds the CSP and its companions to every response; pages and API replies are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    """The route handlers over one Redis connection and the adapter store.

    Handlers that touch Redis or the disk are plain functions: Starlette runs them in its thread pool.
    """

    def __init__(self, settings: Settings, r: redis.Redis) -> None:
        self.auth = DashboardAuth(settings.api_keys)
        self.store = RunStore(r)
        self.adapters = LocalAdapterStore(settings.adapter_root)

    def _tenant(self, request: Request) -> str:
        tenant = self.auth.tenant(request)
        if tenant is None:
            raise HTTPException(401)
        return tenant

    async def login_form(self, request: Request) -> Response:
        if not self.auth.enabled or self.auth.tenant(request) is not None:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(pages.login_page())

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_LIMIT:
                return HTMLResponse(pages.login_page("That is not an API key."), status_code=413)
        key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        if self.auth.tenant_for_key(key) is None:
            log.info("dashboard login refused from %s", request.client.host if request.client else "?")
            message = "API key not recognised: check it against POLICYOPT_API_KEYS on the server."
            return HTMLResponse(pages.login_page(message), status_code=401)
        response = RedirectResponse("/", status_code=303)
        self.auth.remember(response, request, key)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login" if self.auth.enabled else "/", status_code=303)
        self.auth.forget(response)
        return response

    def runs(self, request: Request) -> Response:
        tenant = self._tenant(request)
        return HTMLResponse(pages.runs_page(tenant, self.store.list_runs(tenant), self.auth.enabled))

    def run(self, request: Request) -> Response:
        tenant = self._tenant(request)
        run = views.tenant_run(self.store, tenant, request.path_params["run_id"])
        return HTMLResponse(pages.run_page(tenant, run, self.auth.enabled))

    def api_runs(self, request: Request) -> Response:
        tenant = self._tenant(request)
        return JSONResponse({"runs": [views.run_summary(r) for r in self.store.list_runs(tenant)]})

    def api_events(self, request: Request) -> Response:
        tenant = self._tenant(request)
        run = views.tenant_run(self.store, tenant, request.path_params["run_id"])
        after = event_id(request.query_params.get("after", ""))
        return JSONResponse(views.events_after(self.store, run, after))

    def api_versions(self, request: Request) -> Response:
        tenant = self._tenant(request)
        run = views.tenant_run(self.store, tenant, request.path_params["run_id"])
        return JSONResponse({"versions": views.versions(self.store, run)})

    def download(self, request: Request) -> Response:
        """The version's files and its manifest as ``RUN-vN.tar.gz``, streamed."""
        tenant = self._tenant(request)
        run = views.tenant_run(self.store, tenant, request.path_params["run_id"])
        version = int(request.path_params["version"])
        manifest = views.manifest_of(self.store, run, version)
        directory = self.adapters.open_version(run.run_id, version)
        # The manifest is the trainer's, but a name is still never allowed to leave the version directory.
        names = [n for n in sorted(manifest.files) if is_plain_file_name(n)] + [MANIFEST_FILE]
        prefix = f"{run.run_id}-v{version}"
        return StreamingResponse(
            (chunk for chunk in tar_gz_chunks(directory, names, prefix) if chunk),
            media_type="application/gzip",
            headers={"content-disposition": f'attachment; filename="{prefix}.tar.gz"'},
        )


class _Metrics:
    """prometheus_client's ASGI app (the default REGISTRY) at exactly ``/metrics``: an instance, so that
    Starlette's Route passes it the raw ASGI call instead of a Request."""

    def __init__(self) -> None:
        self._app = make_asgi_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _not_found(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": "not found"}, status_code=404)
    dashboard: Dashboard = request.app.state.dashboard
    tenant = dashboard.auth.tenant(request)
    return HTMLResponse(pages.not_found_page(tenant, dashboard.auth.enabled), status_code=404)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return await _not_found(request, exc)
    if status == 401:
        if _wants_json(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)
    if _wants_json(request):
        return JSONResponse({"error": "request refused"}, status_code=status)
    return HTMLResponse(pages.error_page(), status_code=status)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "bad request"}, status_code=400)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard %s %s failed", request.method, request.url.path, exc_info=exc)
    if _wants_json(request):
        return JSONResponse({"error": "server error; see the server's log"}, status_code=500)
    return HTMLResponse(pages.error_page(), status_code=500)


def build_app(settings: Settings, r: redis.Redis) -> Starlette:
    """The dashboard and ``/metrics`` as one ASGI app over ``r`` (the server's Redis client)."""
    dashboard = Dashboard(settings, r)
    run = "/runs/{run_id:str}"
    app = Starlette(
        routes=[
            Route("/", dashboard.runs),
            Route("/login", dashboard.login_form, methods=["GET"]),
            Route("/login", dashboard.login, methods=["POST"]),
            Route("/logout", dashboard.logout, methods=["POST"]),
            Route(run, dashboard.run),
            Route(run + "/versions/{version:int}/download", dashboard.download),
            Route("/api/runs", dashboard.api_runs),
            Route("/api" + run + "/events", dashboard.api_events),
            Route("/api" + run + "/versions", dashboard.api_versions),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            Route("/metrics", _Metrics()),
        ],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            HTTPException: _http_error,
            NotFound: _not_found,
            InvalidArgument: _bad_request,
            Exception: _server_error,
        },
    )
    app.state.dashboard = dashboard
    return app


__all__ = ["CSP", "build_app"]
