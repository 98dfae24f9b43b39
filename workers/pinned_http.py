"""HTTP(S) to a tenant's endpoint through the outbound policy: resolved, checked and pinned per connection.

``pinned_opener(policy, what)`` is a ``urllib`` opener whose every connection resolves the URL's host,
checks each address against ``core.outbound.OutboundPolicy`` and connects to the checked address, while
the request still names the host (``Host`` header, TLS server name and certificate check). It follows no
redirects (a 3xx is an error: a redirect would go where the policy did not look) and uses no proxy.
"""

from __future__ import annotations

import http.client
import socket
import urllib.request
from collections.abc import Callable

from policyopt.core.outbound import OutboundPolicy

_ConnectionFactory = Callable[..., http.client.HTTPConnection]


def _pinned(cls: type[http.client.HTTPConnection], policy: OutboundPolicy, what: str) -> _ConnectionFactory:
    def make(host: str, **kwargs: object) -> http.client.HTTPConnection:
        connection = cls(host, **kwargs)  # type: ignore[arg-type]

        def create_connection(
            address: tuple[str, int], timeout: float | None = None, source: tuple[str, int] | None = None
        ) -> socket.socket:
            name, port = address
            ip = policy.connect_host(name, port, what)  # PermissionDenied before any packet is sent
            return socket.create_connection((ip, port), timeout, source)

        connection._create_connection = create_connection  # type: ignore[attr-defined]
        return connection

    return make


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: OutboundPolicy, what: str) -> None:
        super().__init__()
        self._factory = _pinned(http.client.HTTPConnection, policy, what)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._factory, req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: OutboundPolicy, what: str) -> None:
        super().__init__()
        self._factory = _pinned(http.client.HTTPSConnection, policy, what)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._factory, req, context=self._context)  # type: ignore[attr-defined]


def pinned_opener(policy: OutboundPolicy, what: str) -> urllib.request.OpenerDirector:
    """An opener for http and https only, pinned to checked addresses, without redirects or proxies."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        _PinnedHTTPHandler(policy, what),
        _PinnedHTTPSHandler(policy, what),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


__all__ = ["pinned_opener"]
