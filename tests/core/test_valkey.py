"""The embedded Valkey: append-only persistence across restarts, and it dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from policyopt.core.valkey import EmbeddedValkey


def test_a_restart_on_the_same_data_dir_keeps_streams_and_keys(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as first:
        client = redis.Redis.from_url(first.url)
        client.set("po:key", "kept")
        client.xadd("po:stream", {"data": "queued"})
        client.xgroup_create("po:stream", "g", id="0")
        client.xreadgroup("g", "c", {"po:stream": ">"}, count=1)  # one pending entry
    assert (tmp_path / "appendonlydir").is_dir()
    with EmbeddedValkey(tmp_path) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get("po:key") == b"kept"
        assert client.xlen("po:stream") == 1
        assert client.xpending("po:stream", "g")["pending"] == 1


LAUNCH = """
import sys, time
from policyopt.core.valkey import EmbeddedValkey
valkey = EmbeddedValkey(sys.argv[1]).start()
print(valkey._proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has exited too
        return fh.read().split()[2] != "Z"


def test_valkey_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    valkey_pid = int(parent.stdout.readline())
    assert _alive(valkey_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(valkey_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(valkey_pid), "the embedded Valkey outlived its parent"
