"""`policyopt demo --model tiny`: the whole service in child processes, and the reward rises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_tiny_demo_raises_the_reward_and_leaves_adapter_and_curve(tmp_path: Path) -> None:
    env = dict(
        os.environ, POLICYOPT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", POLICYOPT_HTTP_PORT="0"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "policyopt.cli.main", "demo", "--model", "tiny", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"first \d+ steps: ([\d.]+)\s+last \d+ steps: ([\d.]+)", result.stdout)
    assert summary, result.stdout[-2000:]
    first, last = float(summary.group(1)), float(summary.group(2))
    assert last > first + 0.05, f"mean reward did not rise: first {first:.3f}, last {last:.3f}"
    assert (out / "reward_curve.png").stat().st_size > 1000
    manifests = list((out / "adapter").glob("run-*/v*/manifest.json"))
    assert len(manifests) == 1 and (manifests[0].parent / "adapter_model.safetensors").exists()
    assert "mean reward per step" in result.stdout
    # the eval curve beside the reward: version 0 (the baseline) through the last version, every 6 of 30
    rows = re.findall(r"^v(\d+)\s+\S+\s+([\d.]+)", result.stdout, flags=re.MULTILINE)
    assert [int(v) for v, _ in rows] == [0, 6, 12, 18, 24, 30], result.stdout[-2000:]
    assert all(0.0 <= float(mean) <= 1.0 for _, mean in rows)
    assert "eval mean by version" in result.stdout
