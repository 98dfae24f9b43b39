"""``policyopt serve`` as a process: binds port 0, reports the port, serves health, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def test_serve_reports_the_bound_port_and_stops_on_sigterm(valkey_url: str, tmp_path) -> None:
    env = {
        **os.environ,
        "REDIS_URL": valkey_url,
        "POLICYOPT_DATA_DIR": str(tmp_path),
        "POLICYOPT_API_KEYS": "t:k",
        "POLICYOPT_HTTP_PORT": "-1",  # never the default 8080 in tests
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyopt.cli.main", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"listening on (\S+:\d+)", line)
        assert match, f"no address in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        with grpc.insecure_channel(match.group(1)) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
