"""An HTTP port: uvicorn serving an ASGI app in a daemon thread, on a socket bound before it starts.

The server's dashboard and ``policyopt proxy`` serve through it.

Binding first makes port 0 work (``port`` is the port bound) and makes a taken port fail in the caller,
with its address, instead of inside the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from policyopt.core.metrics import url_host

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); OSError naming the address if taken."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind HTTP {host}:{port}; is another process on that port? ({exc})") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """``start()`` serves ``app`` on ``host:port`` in a daemon thread; ``stop()`` ends it; a context manager."""

    def __init__(self, app: ASGIApp, host: str, port: int, what: str = "dashboard, /metrics") -> None:
        self.host = host
        self.what = what
        self._socket = bind(host, port)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="policyopt-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/"

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> HttpServer:
        self._thread.start()
        log.info("HTTP (%s) on %s", self.what, self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["HttpServer", "bind"]
