"""Agentic RL and on-policy distillation through the real gRPC server and a real TrainerWorker in-thread.

The calculator agent of ``examples/calculator_agent.py`` runs against the tiny model, sampled locally with
transformers into OpenAI-compatible responses (token ids + log-probs), so the SDK's parsing is exercised too.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from peft import PeftModel
from support.examples import load_example
from transformers import AutoModelForCausalLM, AutoTokenizer

from policyopt.client import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Trajectory,
    TrajectoryGroup,
    Turn,
)
from policyopt.client.agentic import ChatTemplateRenderer
from policyopt.core.types import TrajectoryGroup as StoredGroup
from policyopt.core.types import from_json
from policyopt.state.queue import groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.train.worker import TrainerWorker

agent = load_example("calculator_agent")


class LocalSampler:
    """Samples the tiny model (or a published adapter of it) into /v1/completions-shaped responses."""

    def __init__(self, model_dir: Path, seed: int = 0) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model_dir = model_dir
        self.models: dict[str, torch.nn.Module] = {
            "base": AutoModelForCausalLM.from_pretrained(model_dir).eval()
        }
        self.generator = torch.Generator().manual_seed(seed)

    def load_adapter(self, name: str, path: Path) -> None:
        base = AutoModelForCausalLM.from_pretrained(self.model_dir)
        self.models[name] = PeftModel.from_pretrained(base, str(path)).eval()

    @torch.no_grad()
    def __call__(self, context_ids: list[int], model_name: str, max_tokens: int) -> Mapping[str, Any]:
        model, ids = self.models[model_name], list(context_ids)
        sampled, logprobs = [], []
        for _ in range(max_tokens):
            logp_V = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(torch.multinomial(logp_V.exp(), 1, generator=self.generator))
            sampled.append(token)
            logprobs.append(float(logp_V[token]))
            ids.append(token)
            if token == self.tokenizer.eos_token_id:
                break
        text = self.tokenizer.decode(sampled, skip_special_tokens=True)
        choice = {"index": 0, "text": text, "token_ids": sampled, "prompt_token_ids": list(context_ids)}
        choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in sampled], "token_logprobs": logprobs}
        return {"model": model_name, "choices": [choice]}


@pytest.fixture
def client_a(server: Any) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client


@pytest.fixture
def trainer(server: Any, valkey_url: str) -> Iterator[TrainerWorker]:
    settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1)
    worker = TrainerWorker(settings, redis_client=redis.Redis.from_url(valkey_url), block_ms=100)
    yield worker
    worker.close()


def train_step(worker: TrainerWorker, run_id: str) -> None:
    for _ in range(20):
        if worker.train_once(run_id):
            return
    raise AssertionError(f"the trainer did not train run {run_id}")


def renderer_for(sampler: LocalSampler) -> ChatTemplateRenderer:
    return ChatTemplateRenderer(
        lambda messages, gen: sampler.tokenizer.apply_chat_template(
            messages, add_generation_prompt=gen, tokenize=True
        )
    )


def stored_groups(valkey_url: str, run_id: str) -> list[StoredGroup]:
    r = redis.Redis.from_url(valkey_url)
    return [from_json(StoredGroup, fields[b"data"]) for _, fields in r.xrange(groups_stream(run_id))]


def expected_mask(trajectory: Trajectory) -> list[int]:
    return [int(t.role == "model") for t in trajectory.turns for _ in t.token_ids]


@pytest.mark.slow
def test_calculator_agent_trains_through_submit_trajectories(
    client_a: Client, trainer: TrainerWorker, tiny_model_dir: Path, valkey_url: str, tmp_path: Path
) -> None:
    run = client_a.create_run(
        str(tiny_model_dir), method="agentic_grpo", group_size=3, prompts_per_step=2, learning_rate=5e-3
    )
    sampler = LocalSampler(tiny_model_dir)
    renderer, rng = renderer_for(sampler), random.Random(0)
    problems = [agent.Problem(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(2)]
    groups = agent.collect_groups(sampler, renderer, "base", 0, problems, 3)
    group_ids = run.submit_trajectories(groups)
    assert len(group_ids) == 2

    stored = stored_groups(valkey_url, run.run_id)
    for submitted, queued in zip(groups, stored, strict=True):
        for trajectory, kept in zip(submitted.trajectories, queued.trajectories, strict=True):
            assert kept.completion_ids == [
                i for t in trajectory.turns for i in t.token_ids
            ]  # never re-tokenized
            assert kept.loss_mask == expected_mask(trajectory)
            assert 0 in kept.loss_mask  # every episode has an environment turn
            assert all(
                lp == 0.0 for lp, m in zip(kept.sampler_logprobs, kept.loss_mask, strict=True) if not m
            )
    train_step(trainer, run.run_id)
    first = client_a.list_adapters(run.run_id)[0]
    assert first.metrics["reward/turns_mean"] == 2.0  # the mask's environment runs split the turns

    sampler.load_adapter(f"{run.run_id}@v1", client_a.pull_adapter(run.run_id, 1, tmp_path))
    groups = agent.collect_groups(sampler, renderer, f"{run.run_id}@v1", 1, problems, 3)
    run.submit_trajectories(groups)
    train_step(trainer, run.run_id)
    assert run.wait_for_version(2, timeout=30).version == 2
    with pytest.raises(InvalidArgument, match="max_staleness"):  # version 0 is 2 behind, the limit is 1
        run.submit_trajectories([[agent_trajectory(version=0), agent_trajectory(version=0)]])


def agent_trajectory(
    *, version: int = 0, prompt: list[int] | None = None, model_ids: list[int] | None = None
) -> Trajectory:
    ids = model_ids if model_ids is not None else [5, 6, 7]
    return Trajectory(
        prompt_ids=prompt if prompt is not None else [2, 10, 11],
        turns=[
            Turn.model(ids, [-1.0] * len(ids), version),
            Turn.environment([12, 13]),
            Turn.model([8], [-0.5], version),
        ],
        reward=1.0,
    )


def test_submit_trajectories_rejects_bad_input_with_clear_statuses(
    client_a: Client, tiny_model_dir: Path
) -> None:
    run = client_a.create_run(str(tiny_model_dir), method="agentic_grpo", group_size=2)
    good = agent_trajectory()
    cases: list[tuple[list[Any], type[Exception], str]] = [
        ([], InvalidArgument, "no groups"),
        ([[good]], InvalidArgument, "at least 2"),
        ([[good, agent_trajectory(model_ids=[5, 10**6])]], InvalidArgument, "vocabulary"),
        (
            [[good, dataclasses.replace(good, turns=[Turn.model([5, 6], [-1.0], 0)])]],
            InvalidArgument,
            "1 log-probs for 2 tokens",
        ),
        ([[good, agent_trajectory(prompt=[2] * 600)]], InvalidArgument, "context"),
        ([[good, agent_trajectory(version=3)]], NotFound, "does not exist"),
        (
            [[good, dataclasses.replace(good, turns=[Turn.environment([5])])]],
            InvalidArgument,
            "no model turn",
        ),
        ([[good, agent_trajectory(prompt=[3, 4])]], InvalidArgument, "share no prompt"),
    ]
    for groups, error, message in cases:
        with pytest.raises(error, match=message):
            run.submit_trajectories(groups)
    with pytest.raises(NotFound):
        client_a.submit_trajectories("run-missing", [TrajectoryGroup([good, good])])
    with pytest.raises(FailedPrecondition, match="no reward endpoint"):
        run.submit_prompts(["hello"])
    assert len(run.submit_trajectories([TrajectoryGroup([good, agent_trajectory()], {"task": 1})])) == 1


def test_opd_runs_must_name_a_teacher_and_others_must_not(client_a: Client, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="needs a teacher"):
        client_a.create_run(str(tiny_model_dir), method="grpo_opd")
    with pytest.raises(InvalidArgument, match="does not use one"):
        client_a.create_run(str(tiny_model_dir), method="grpo", teacher_model=str(tiny_model_dir))
    run = client_a.create_run(
        str(tiny_model_dir), method="opd", teacher_model=str(tiny_model_dir), teacher_coef=0.25
    )
    assert run.info.reward_side == {"estimator.coef": 0.25}


@pytest.mark.slow
def test_grpo_opd_step_reports_the_reverse_kl_to_a_local_teacher(
    client_a: Client, trainer: TrainerWorker, tiny_model_dir: Path
) -> None:
    run = client_a.create_run(
        str(tiny_model_dir),
        method="grpo_opd",
        group_size=2,
        prompts_per_step=1,
        teacher_model=str(tiny_model_dir),
    )
    run.submit_trajectories([[agent_trajectory(), dataclasses.replace(agent_trajectory(), reward=0.0)]])
    train_step(trainer, run.run_id)
    metrics = client_a.list_adapters(run.run_id)[0].metrics
    # Version 0 is the base model itself (LoRA B = 0) and so is the teacher: the reverse KL is 0.
    assert metrics["reward/teacher_reverse_kl"] == pytest.approx(0.0, abs=1e-4)
    assert "reward/task_advantage_std" in metrics
    assert RunStore(trainer.r).get_run(run.run_id).version == 1
