"""``policyopt proxy`` in front of a real vLLM CPU server, driven by the official OpenAI client with tools:
the recorded ids and log-probs are vLLM's own for the same request, and a run trains on the episodes to
version 2, which the proxy then samples with (vLLM loads each version by name)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import torch
from support.agents import recorded_calls, tool_loop
from support.vllm import LOGPROB_TOLERANCE, recompute_logprobs

from policyopt.client import Client, RunHandle
from policyopt.workers.engines import SamplingParams
from policyopt.workers.engines.vllm_engine import VLLMEngine
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.proxy import Proxy
from policyopt.workers.train.worker import TrainerWorker

pytestmark = pytest.mark.vllm

TASK = [{"role": "user", "content": "What is 2 plus 3? Use the add tool."}]


@pytest.fixture
def run(server: Any, tiny_model_dir: Path) -> Iterator[RunHandle]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client.create_run(
            str(tiny_model_dir), method="agentic_grpo", group_size=2, prompts_per_step=1, max_new_tokens=10
        )


@pytest.fixture
def proxy(server: Any, run: RunHandle, valkey_url: str, vllm_server: VLLMServer) -> Iterator[Proxy]:
    settings = dataclasses.replace(server.settings, vllm_urls=(vllm_server.url,))
    with Proxy(
        settings, run.run_id, engine="vllm", port=0, redis_client=redis.Redis.from_url(valkey_url)
    ) as p:
        yield p


def episode(llm: openai.OpenAI, run_id: str, session: str, seed: int) -> Any:
    return tool_loop(llm, run_id, TASK, session, seed=seed)[-1]


def test_the_proxy_records_what_vllm_sampled_and_a_run_trains_on_it_to_version_two(
    proxy: Proxy, run: RunHandle, server: Any, valkey_url: str, vllm_server: VLLMServer, tiny_model_dir: Path
) -> None:
    llm = openai.OpenAI(base_url=proxy.base_url, api_key=server.keys["a"], max_retries=0, timeout=120)
    episode(llm, run.run_id, "vllm-e0", seed=11)
    r = redis.Redis.from_url(valkey_url)
    calls = recorded_calls(r, run.run_id, "vllm-e0")
    assert len(calls) == 2
    assert calls[1].prompt_ids[: len(calls[0].prompt_ids) + len(calls[0].completion_ids)] == (
        calls[0].prompt_ids + calls[0].completion_ids
    )
    # the same request straight to vLLM (same prompt ids, parameters and seed) samples the same
    engine = VLLMEngine(tiny_model_dir, urls=(vllm_server.url,))
    try:
        params = SamplingParams(max_new_tokens=10, seed=11)
        direct = engine.sample([calls[0].prompt_ids], 1, params)[0][0]
    finally:
        engine.close()
    assert direct.completion_ids == calls[0].completion_ids
    assert torch.allclose(torch.tensor(direct.sampler_logprobs), torch.tensor(calls[0].logprobs), atol=1e-6)
    rescored = recompute_logprobs(tiny_model_dir, None, calls[0].prompt_ids, calls[0].completion_ids)
    assert torch.allclose(rescored, torch.tensor(calls[0].logprobs), atol=LOGPROB_TOLERANCE)
    run.finish_episode("vllm-e0", 1.0, task_key="t")

    settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1, dtype="float32")
    trainer = TrainerWorker(settings, redis_client=r, block_ms=100)
    try:
        for version in (1, 2):
            start = 1 if version == 1 else 0
            for i in range(start, 2):
                reply = episode(llm, run.run_id, f"vllm-v{version}-e{i}", seed=100 * version + i)
                assert reply.model == f"{run.run_id}@v{version - 1}"
                run.finish_episode(f"vllm-v{version}-e{i}", float(i), task_key="t")
            assert any(trainer.train_once(run.run_id) for _ in range(20))
    finally:
        trainer.close()
    assert run.refresh().version == 2
    reply = llm.chat.completions.create(model=run.run_id, messages=TASK, user="after", max_tokens=2)
    assert reply.model == f"{run.run_id}@v2"
