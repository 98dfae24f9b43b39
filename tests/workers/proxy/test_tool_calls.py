"""Tool calls end to end through ``policyopt proxy``: the tiny model fine-tuned to call ``add`` answers the
official OpenAI client with a parsed ``tool_calls`` reply, the tool result extends the recorded prompt
token for token, and FinishEpisode turns the session into a trajectory that trains the sampled tokens and
masks the tool's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from support.agents import TOOLS, fine_tune_tool_caller, recorded_calls, running_proxy, tool_call_text
from transformers import AutoTokenizer

from policyopt.client import Client, RunHandle
from policyopt.core.types import TrajectoryGroup, from_json
from policyopt.state.queue import groups_stream
from policyopt.workers.proxy import Proxy

TASK = [
    {"role": "system", "content": "You are a calculator. Use the add tool."},
    {"role": "user", "content": "What is 2 plus 3?"},
]
ARGUMENTS = {"a": 2, "b": 3}
TOOL_CALL = tool_call_text("add", ARGUMENTS)
TEMPERATURE = 0.05
"""The lowest temperature is greedy in all but name; the bounds refuse 0."""


@pytest.fixture(scope="module")
def tool_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tune_tool_caller(tiny_model_dir, tmp_path_factory.mktemp("tool-caller"), TASK, TOOL_CALL)


@pytest.fixture
def run(server: Any, tool_model_dir: Path) -> Iterator[RunHandle]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client.create_run(
            str(tool_model_dir), method="agentic_grpo", group_size=2, prompts_per_step=1,
            max_new_tokens=64, temperature=TEMPERATURE,
        )  # fmt: skip


@pytest.fixture
def proxy(server: Any, run: RunHandle, valkey_url: str) -> Iterator[Proxy]:
    # fp32, so the teacher-forced re-scoring matches the sampler to 1e-4 (bf16 would not)
    with running_proxy(server, run.run_id, valkey_url) as running:
        yield running


def ask(llm: openai.OpenAI, run_id: str, messages: list[Any], session: str) -> Any:
    return llm.chat.completions.create(model=run_id, messages=messages, tools=TOOLS, user=session, seed=0)


@pytest.mark.slow
def test_a_sampled_tool_call_is_parsed_and_its_result_becomes_an_environment_turn(
    proxy: Proxy, run: RunHandle, server: Any, valkey_url: str, tool_model_dir: Path
) -> None:
    llm = openai.OpenAI(base_url=proxy.base_url, api_key=server.keys["a"], max_retries=0, timeout=60)
    r = redis.Redis.from_url(valkey_url)
    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)

    first = ask(llm, run.run_id, TASK, "tools-1")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "add" and json.loads(call.function.arguments) == ARGUMENTS
    # the agent appends the reply as the SDK gave it, then the tool's result
    messages = [
        *TASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    second = ask(llm, run.run_id, messages, "tools-1")

    (called, answered) = recorded_calls(r, run.run_id, "tools-1")
    assert tokenizer.decode(called.completion_ids) == TOOL_CALL + "<|im_end|>"
    assert called.finish_reason == "stop" and first.usage.completion_tokens == len(called.completion_ids)
    assert all(lp > -0.1 for lp in called.logprobs)  # the fine-tuned model is sure of every token
    context = called.prompt_ids + called.completion_ids
    assert answered.prompt_ids[: len(context)] == context  # the sampled ids, never re-tokenized
    environment = answered.prompt_ids[len(context) :]
    assert tokenizer.decode(environment) == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"
    assert second.usage.prompt_tokens == len(answered.prompt_ids)

    finished = run.finish_episode("tools-1", 1.0, task_key="add-2-3")
    assert finished.trajectories == 1 and finished.pending_in_group == 1
    assert finished.model_tokens == len(called.completion_ids) + len(answered.completion_ids)
    assert ask(llm, run.run_id, TASK, "tools-2").choices[0].finish_reason == "tool_calls"
    completed = run.finish_episode("tools-2", 0.0, task_key="add-2-3")
    assert completed.pending_in_group == 0 and completed.group_id

    (_, fields) = r.xrange(groups_stream(run.run_id))[-1]
    group = from_json(TrajectoryGroup, fields[b"data"])
    assert group.group_id == completed.group_id and group.prompt_ids == called.prompt_ids
    trajectory = group.trajectories[0]
    sampled, tool = len(called.completion_ids), len(environment)
    assert trajectory.completion_ids == called.completion_ids + environment + answered.completion_ids
    assert trajectory.loss_mask == [1] * sampled + [0] * tool + [1] * len(answered.completion_ids)
    assert trajectory.sampler_logprobs == called.logprobs + [0.0] * tool + answered.logprobs
    assert trajectory.turn_ends == [sampled, len(trajectory.completion_ids)]
    assert trajectory.reward == 1.0
    assert group.trajectories[1].completion_ids == called.completion_ids  # the same call, sampled again
