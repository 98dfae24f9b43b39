"""deploy/docker: the Dockerfiles lint clean, build from what their ignore files keep, and their health check
works; scripts/gpu_check.sh parses. Docker itself is not needed."""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
HEALTHCHECK = DOCKER / "healthcheck.py"


def required_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (the test extra installs it)")
    pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def test_there_is_a_cpu_and_a_cuda_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean_with_hadolint(dockerfile: Path) -> None:
    done = subprocess.run(
        [required_tool("hadolint"), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hadolint ignore" not in dockerfile.read_text(), (
        "justify any ignore in a comment and drop this check"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_policyopt_as_a_non_root_user_with_a_health_check(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert 'ENTRYPOINT ["policyopt"]' in text
    assert "USER 10001:10001" in text.split("FROM")[-1], "the final stage must drop root"
    assert 'CMD ["python", "/opt/policyopt/healthcheck.py"]' in text
    assert '"/src[service]"' in text, "the image installs the repository's own package with the service extra"
    ignore_file = dockerfile.parent / f"{dockerfile.name}.dockerignore"
    ignore = [line.strip() for line in ignore_file.read_text().splitlines() if not line.startswith("#")]
    for kept in ("pyproject.toml", "README.md", "deploy/docker", "core", "proto"):
        assert kept not in ignore, f"{kept} is needed by the build"


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def run_healthcheck(monkeypatch: pytest.MonkeyPatch, grpc_port: int, http_port: int) -> int:
    monkeypatch.setenv("POLICYOPT_PORT", str(grpc_port))
    monkeypatch.setenv("POLICYOPT_HTTP_PORT", str(http_port))
    module = runpy.run_path(str(HEALTHCHECK))
    code: int = module["main"]()
    return code


def test_health_check_follows_the_servers_grpc_health(
    monkeypatch: pytest.MonkeyPatch, health_server: tuple[int, health.HealthServicer]
) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run_healthcheck(monkeypatch, port, -1) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_healthcheck(monkeypatch, port, -1) == 1


def test_health_check_fails_when_nothing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with closed_port() as port:
        assert run_healthcheck(monkeypatch, port, port) == 1


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port nothing listens on: bound, never listening, while the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_gpu_check_script_parses_and_passes_shellcheck() -> None:
    script = REPO / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout
