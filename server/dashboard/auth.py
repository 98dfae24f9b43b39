"""Who is looking: the API key in the session cookie, resolved to its tenant on every request.

The cookie holds the key itself (HttpOnly, SameSite=Strict, Secure over HTTPS), so any replica of the
server resolves it with the same constant-time comparison the gRPC ``AuthInterceptor`` uses, and
removing a key from ``POLICYOPT_API_KEYS`` ends its sessions at the next restart.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from policyopt.server.interceptors import DEFAULT_TENANT, AuthInterceptor

COOKIE = "policyopt_key"
COOKIE_MAX_AGE_S = 12 * 3600


class DashboardAuth:
    """API key -> tenant for the dashboard; with no keys configured everyone is tenant ``default``."""

    def __init__(self, api_keys: dict[str, str]) -> None:
        self.enabled = bool(api_keys)
        self._keys = AuthInterceptor(api_keys)

    def tenant_for_key(self, key: str) -> str | None:
        if not self.enabled:
            return DEFAULT_TENANT
        return self._keys.tenant_for(key) if key else None

    def tenant(self, request: Request) -> str | None:
        """The caller's tenant, or None when it must log in (no cookie, or a key no longer known)."""
        return self.tenant_for_key(request.cookies.get(COOKIE, ""))

    @staticmethod
    def remember(response: Response, request: Request, key: str) -> None:
        response.set_cookie(
            COOKIE,
            key,
            max_age=COOKIE_MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def forget(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


__all__ = ["COOKIE", "DashboardAuth"]
