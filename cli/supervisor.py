"""`policyopt up`: embedded Valkey, the gRPC server and both workers as child processes.

This is the local shape of the production deployment: the same processes that `policyopt serve`,
`policyopt worker rollout` and `policyopt worker train` start separately, pointed at one REDIS_URL.
Each child has its own HTTP port (``/metrics``; the server's also serves the dashboard): the server gets
``http_port`` (a free one when it is 0), each worker a free one; ``http_port=-1`` turns HTTP off for all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from policyopt.cli.supervision import Supervisor
from policyopt.core.errors import Unavailable
from policyopt.core.metrics import http_host, url_host
from policyopt.core.outbound import LOCAL_ALLOWLIST
from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey, die_with_parent

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """Children started by ``start_stack``; ``stop()`` ends them in reverse order."""

    settings: Settings
    address: str
    valkey: EmbeddedValkey | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None
    http_urls: dict[str, str] = field(default_factory=dict)
    """Each child's HTTP base URL by name (``server``, ``rollout-0``, ``trainer``): ``/metrics`` under each."""
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    """Each child's arguments and environment, so that a restart gets the same ones (ports included)."""
    supervisor: Supervisor | None = None
    """Restarts dead children (``start_stack(supervise=True)``); None: a dead child fails ``check_alive``."""

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far by child name (``valkey`` included); empty without supervision."""
        return dict(self.supervisor.restarts) if self.supervisor else {}

    def launch(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start child ``name`` (``policyopt ARGS``); ``respawn(name)`` starts it again the same way."""
        self.commands[name] = (args, env)
        return self.respawn(name)

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        args, env = self.commands[name]
        self.processes[name] = _spawn(name, args, env, self.log_dir)
        return self.processes[name]

    def check_alive(self) -> None:
        """Raise Unavailable when a child exited: without supervision, or when the supervisor itself died."""
        if self.supervisor is not None:
            if not self.supervisor.alive:
                raise Unavailable("the supervisor of the children stopped; see the log")
            return
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                hint = f"; see {self.log_dir / (name + '.log')}" if self.log_dir else ""
                raise Unavailable(f"{name} exited with code {code}{hint}")

    def stop(self, grace_s: float = 15.0) -> None:
        if self.supervisor is not None:  # first, so that nothing is restarted while stopping
            self.supervisor.stop()
        for _name, proc in reversed(list(self.processes.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.valkey is not None:
            self.valkey.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def child_env(settings: Settings, threads: int) -> dict[str, str]:
    """Environment for a child: the settings that matter, and a deliberate torch thread count."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "POLICYOPT_DATA_DIR": settings.data_dir,
            "POLICYOPT_TORCH_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in (
        ("POLICYOPT_TLS_CERT", settings.tls_cert),
        ("POLICYOPT_TLS_KEY", settings.tls_key),
        ("POLICYOPT_TLS_CLIENT_CA", settings.tls_client_ca),
        ("POLICYOPT_REDIS_CA", settings.redis_ca),
    ):
        if value:  # settings from a --config file reach the children too
            env[name] = value
    env.update(_policy_env(settings))
    if settings.dtype != "auto":  # else the environment's POLICYOPT_DTYPE, if any, reaches the children
        env["POLICYOPT_DTYPE"] = settings.dtype
    env["POLICYOPT_TRAINER_LEASE_MS"] = str(settings.trainer_lease_ms)
    env["POLICYOPT_CLAIM_IDLE_MS"] = str(settings.claim_idle_ms)
    if settings.api_keys:
        env["POLICYOPT_API_KEYS"] = ",".join(f"{tenant}:{key}" for key, tenant in settings.api_keys.items())
    return env


def _policy_env(settings: Settings) -> dict[str, str]:
    """The outbound policy and model declarations, as env, so that every child applies the same ones."""
    env = {"POLICYOPT_ENDPOINT_ALLOWLIST": ",".join(settings.endpoint_allowlist)}
    if settings.models:
        env["POLICYOPT_MODELS"] = ",".join(f"{name}={source}" for name, source in settings.models.items())
    if settings.model_roots:
        env["POLICYOPT_MODEL_ROOTS"] = os.pathsep.join(settings.model_roots)
    return env


def local_settings(settings: Settings) -> Settings:
    """Local use: reward and teacher endpoints may also be on this machine (loopback), unless the operator
    set an allowlist. The service's own Valkey stays refused."""
    if settings.endpoint_allowlist:
        return settings
    return settings.replace(endpoint_allowlist=LOCAL_ALLOWLIST)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _with_http_port(stack: Stack, name: str, env: dict[str, str], port: int | None = None) -> dict[str, str]:
    """``env`` with the child's own HTTP port (``port``, else a free one); its URL goes in ``stack.http_urls``.
    Unchanged (HTTP off) when ``http_port`` is negative."""
    settings = stack.settings
    if settings.http_port < 0:
        return {**env, "POLICYOPT_HTTP_PORT": str(settings.http_port)}
    host = http_host(settings)
    port = port or _free_port(host)
    stack.http_urls[name] = f"http://{url_host(host)}:{port}"
    return {**env, "POLICYOPT_HTTP_PORT": str(port), "POLICYOPT_HTTP_HOST": host}


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_dir / f"{name}.log", "ab") if log_dir else None  # noqa: SIM115 (owned by the child)
    cmd = [sys.executable, "-m", "policyopt.cli.main", *args]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


def wait_for_port(host: str, port: int, timeout_s: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise Unavailable(f"the server did not listen on {host}:{port} within {timeout_s:.0f}s")


def start_stack(
    settings: Settings,
    *,
    log_dir: Path | None = None,
    workers: bool = True,
    rollout_workers: int = 1,
    supervise: bool = False,
    first_restart_s: float = 0.5,
) -> Stack:
    """Start Valkey (unless REDIS_URL is set), the server and the workers; return when the server listens.

    With ``supervise`` a thread restarts any child that dies, the first time after ``first_restart_s``
    (see ``cli/supervision.py``); without it a dead child makes ``check_alive`` raise.
    """
    settings = local_settings(settings)
    valkey = None
    if not settings.redis_url:
        valkey = EmbeddedValkey(Path(settings.data_dir) / "valkey").start()
        settings = settings.replace(redis_url=valkey.url)
    port = settings.port or _free_port(settings.host)
    settings = settings.replace(port=port)
    stack = Stack(settings=settings, address=f"{settings.host}:{port}", valkey=valkey, log_dir=log_dir)
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 2
    # Two torch processes share the machine; each gets half the cores so neither oversubscribes.
    worker_threads = settings.torch_threads or max(1, cores // 2)
    try:
        server_env = _with_http_port(stack, "server", child_env(settings, 1), settings.http_port)
        stack.launch("server", ["serve", "--host", settings.host, "--port", str(port)], server_env)
        if workers:
            env = child_env(settings, worker_threads)
            for i in range(rollout_workers):
                name = f"rollout-{i}"
                stack.launch(name, ["worker", "rollout"], _with_http_port(stack, name, env))
            trainer_env = _with_http_port(stack, "trainer", env)
            stack.launch("trainer", ["worker", "train"], trainer_env)
        wait_for_port(settings.host, port, 120, stack)
        if supervise:
            stack.supervisor = Supervisor(stack, first_restart_s=first_restart_s).start()
    except BaseException:
        stack.stop()
        raise
    return stack
