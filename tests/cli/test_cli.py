"""The client subcommands of ``policyopt`` against a real server, and ``serve`` without REDIS_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyopt.cli.main import main
from policyopt.client import Client


def test_serve_without_redis_url_says_to_use_up() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "policyopt.cli.main", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "policyopt up" in result.stderr


def test_runs_lists_the_runs_of_the_key(
    server, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server.address, api_key=server.keys["b"]) as client:
        run = client.create_run(str(tiny_model_dir), group_size=2)
    assert main(["--address", server.address, "--api-key", server.keys["b"], "runs"]) == 0
    assert run.run_id in capsys.readouterr().out


def test_a_service_error_is_printed_with_its_name(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--address", server.address, "--api-key", server.keys["b"], "adapters", "list", "run-missing"])
        == 1
    )
    assert "NotFound" in capsys.readouterr().err


def test_a_wrong_key_is_reported(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", server.address, "--api-key", "wrong", "runs"]) == 1
    assert "Unauthenticated" in capsys.readouterr().err
