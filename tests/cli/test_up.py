"""``policyopt up``: embedded Valkey, server and workers from one command; Ctrl-C stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
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


def scrape(url: str, timeout_s: float = 60.0) -> str:
    """The text at ``url``, retried while the process is still starting to listen."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_up_serves_with_an_embedded_valkey_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {
        **os.environ, "POLICYOPT_DATA_DIR": str(tmp_path), "POLICYOPT_API_KEYS": "team:k",
        "POLICYOPT_HTTP_PORT": "0",  # free HTTP ports, never the default 8080
    }  # fmt: skip
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
        urls = {}
        for _, line in zip(range(30), proc.stdout, strict=False):  # a line per process: `  NAME ...: URL`
            found = re.search(r"^  (\S+) .*: (http://\S+)$", line.rstrip())
            if found:
                urls[found.group(1)] = found.group(2)
            if len(urls) == 3:
                break
        assert set(urls) == {"server", "rollout-0", "trainer"}, urls
        for name in ("rollout-0", "trainer"):
            assert "policyopt_redis_errors_total" in scrape(urls[name]), name
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
