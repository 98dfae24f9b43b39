"""``policyopt up``: embedded Valkey, server and workers from one command; Ctrl-C stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from policyopt.client import Client

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_up_serves_with_an_embedded_valkey_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "POLICYOPT_DATA_DIR": str(tmp_path), "POLICYOPT_API_KEYS": "team:k"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyopt.cli.main", "up", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # log lines come first; `up` prints its address once the server listens
            seen.append(line)
            match = re.search(r"policyopt is up on (\S+:\d+); REDIS_URL=\S+ \(embedded Valkey\)", line)
            if match or len(seen) > 50:
                break
        assert match, "".join(seen)
        children = _children(proc.pid)
        assert len(children) == 4  # valkey, server, rollout worker, trainer
        with Client(match.group(1), api_key="k") as client:
            assert client.list_runs() == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], (
            "a child outlived `policyopt up`"
        )
        assert (tmp_path / "valkey" / "appendonlydir").is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
