"""``policyopt methods`` without a server: ``--local``, and the fallback when no server answers."""

from __future__ import annotations

import socket

import pytest

from policyopt.cli.main import main
from policyopt.workers.algorithms import PRESETS


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_lists_every_preset_and_axis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", f"127.0.0.1:{_closed_port()}", "methods", "--local"]) == 0
    captured = capsys.readouterr()
    for name in PRESETS:
        assert f"\n  {name}: " in captured.out
    assert "\ntrajectory_side.mismatch_correction:" in captured.out
    assert "token_tis" in captured.out
    assert captured.err == ""  # --local asks no server, so nothing to warn about


def test_unreachable_server_falls_back_to_the_local_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    assert main(["--address", address, "methods"]) == 0
    captured = capsys.readouterr()
    assert f"no server answers at {address}" in captured.err
    assert "\n  grpo: " in captured.out and "\nreward_side.estimator:" in captured.out
