"""A real HTTP listener on loopback that answers every request with an error carrying a secret body.

For the SSRF tests: it records the paths it was asked for (so a test can show nothing called it), and its
body must never reach a tenant.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


class SecretHTTPServer(http.server.ThreadingHTTPServer):
    """Answers every GET and POST with ``status`` and ``body``; ``paths`` lists what was asked for."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _SecretHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SecretHandler(http.server.BaseHTTPRequestHandler):
    server: SecretHTTPServer

    def _answer(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def secret_http_server(status: int, body: bytes) -> Iterator[SecretHTTPServer]:
    """A ``SecretHTTPServer`` serving on a thread until the block ends."""
    server = SecretHTTPServer(status, body)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
