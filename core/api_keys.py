"""API key -> tenant: the one lookup the gRPC ``AuthInterceptor``, the dashboard and ``policyopt proxy`` share.

Keys come from ``POLICYOPT_API_KEYS`` (``Settings.api_keys``, key -> tenant); with none configured every
caller is tenant ``default`` (local use only). Keys are compared in constant time, all of them every time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

DEFAULT_TENANT = "default"


def tenant_for_key(api_keys: Mapping[str, str], key: str) -> str | None:
    """The tenant whose key ``key`` is; None when no configured key matches."""
    found = None
    for known, tenant in api_keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            found = tenant
    return found


def api_key_from(metadata: Mapping[str, str]) -> str:
    """The API key from ``x-api-key`` or ``authorization: Bearer KEY`` (lower-case names); empty when absent."""
    if metadata.get("x-api-key"):
        return metadata["x-api-key"].strip()
    scheme, _, token = metadata.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


__all__ = ["DEFAULT_TENANT", "api_key_from", "tenant_for_key"]
