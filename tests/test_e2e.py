"""End to end: Valkey, the server and both workers as separate processes, driven through the SDK."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, RewardServer
from policyopt.core.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

KEY = "e2e-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("e2e-data")
    settings = Settings(
        data_dir=str(data_dir),
        port=0,
        http_port=0,  # free HTTP ports, never the default 8080
        api_keys={KEY: "team"},
        torch_threads=1,
        model_roots=(str(tmp_path_factory.getbasetemp()),),  # the tiny model, named by its path
    )
    with start_stack(settings, log_dir=data_dir / "logs") as running:
        yield running


def digit_share(prompt: str, completion: str, metadata: dict[str, object]) -> float:
    """Reward: the share of the completion's characters that are digits (a tiny random model can move it)."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def test_two_steps_publish_versions_that_peft_loads(
    stack: Stack, tiny_model_dir: Path, tmp_path: Path
) -> None:
    seen_prompts: list[str] = []
    lock = threading.Lock()

    def score(prompt: str, completion: str, metadata: dict[str, object]) -> float:
        with lock:
            seen_prompts.append(prompt)
        return digit_share(prompt, completion, metadata)

    with RewardServer(score) as endpoint, Client(stack.address, api_key=KEY) as client:
        client.register_reward_endpoint("digits", endpoint.address)
        run = client.create_run(
            base_model=str(tiny_model_dir),
            method="grpo",
            reward_endpoint="digits",
            group_size=4,
            prompts_per_step=2,
            max_new_tokens=8,
            learning_rate=5e-3,
            max_steps=2,
        )
        run.submit_prompts(
            [f"Say a number like {i}" for i in range(4)], metadata=[{"i": i} for i in range(4)]
        )
        run.wait_for_version(2, timeout=300)
        dest = run.pull_adapter(2, tmp_path / "pulled")

        info = run.refresh()
        assert info.version == 2 and info.step == 2
        assert info.groups_trained == 4
        versions = [v.version for v in run.list_adapters()]
        assert versions == [1, 2]

    assert len(seen_prompts) == 16  # 4 prompts x group_size 4, each scored once
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["method"] == "grpo"
    assert set(manifest["files"]) >= {"adapter_config.json", "adapter_model.safetensors"}

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[2, 270, 283, 202, 266]])
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(base, dest)
        tuned_logits = tuned(ids).logits
    assert not torch.allclose(base_logits, tuned_logits), "version 2 must change the model's outputs"
