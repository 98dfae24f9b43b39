"""``policyopt proxy`` driven by the official OpenAI client, against the transformers engine on the tiny model:
what it records is what the engine sampled, sessions become trajectories through FinishEpisode, and a run
trains on them to version 2. Auth, sessions and refusals answer with the service's statuses and reasons."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import torch
from support.agents import recorded_calls, running_proxy, tool_loop
from support.examples import load_example
from transformers import AutoModelForCausalLM, AutoTokenizer

from policyopt.client import Client, FailedPrecondition, NotFound, RunHandle
from policyopt.core.types import TrajectoryGroup, from_json
from policyopt.state.queue import groups_stream
from policyopt.workers.proxy import Proxy
from policyopt.workers.train.worker import TrainerWorker

TASK = [
    {"role": "system", "content": "You are a calculator. Use the add tool."},
    {"role": "user", "content": "What is 2 plus 3?"},
]


@pytest.fixture
def client_a(server: Any) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client


@pytest.fixture
def run(client_a: Client, tiny_model_dir: Path) -> RunHandle:
    return client_a.create_run(
        str(tiny_model_dir), method="agentic_grpo", group_size=2, prompts_per_step=1, max_new_tokens=12,
        learning_rate=5e-3,
    )  # fmt: skip


@pytest.fixture
def proxy(server: Any, run: RunHandle, valkey_url: str) -> Iterator[Proxy]:
    # fp32, so the teacher-forced re-scoring matches the sampler to 1e-4 (bf16 would not)
    with running_proxy(server, run.run_id, valkey_url) as running:
        yield running


def openai_client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=60)


def agent_episode(llm: openai.OpenAI, run_id: str, session: str) -> list[Any]:
    return tool_loop(llm, run_id, TASK, session)


@pytest.mark.slow
def test_recorded_calls_are_what_the_engine_sampled_and_the_next_prompt_extends_them(
    proxy: Proxy, run: RunHandle, server: Any, valkey_url: str, tiny_model_dir: Path
) -> None:
    llm = openai_client(proxy, server.keys["a"])
    replies = agent_episode(llm, run.run_id, "episode-1")
    calls = recorded_calls(redis.Redis.from_url(valkey_url), run.run_id, "episode-1")
    assert len(calls) == 2 and all(c.version == 0 for c in calls)
    first, second = calls
    # the second prompt is the first prompt + what was sampled + the environment's turn, token for token
    assert second.prompt_ids[: len(first.prompt_ids) + len(first.completion_ids)] == (
        first.prompt_ids + first.completion_ids
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert '"name": "add"' in tokenizer.decode(first.prompt_ids)  # the tools were rendered
    added = tokenizer.decode(second.prompt_ids[len(first.prompt_ids) + len(first.completion_ids) :])
    assert "Go on." in added or "<|im_start|>tool" in added
    assert replies[0].usage.completion_tokens == len(first.completion_ids)
    if not replies[0].choices[0].message.tool_calls:
        text = tokenizer.decode(first.completion_ids, skip_special_tokens=True)
        assert replies[0].choices[0].message.content == text
    # the recorded log-probs are the engine's: re-scored teacher-forced by the base model (temperature 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for call in calls:
        ids = torch.tensor([call.prompt_ids + call.completion_ids])
        with torch.no_grad():
            logp_T_V = torch.log_softmax(
                model(input_ids=ids).logits[0, len(call.prompt_ids) - 1 : -1].float(), -1
            )
        rescored = logp_T_V.gather(-1, torch.tensor(call.completion_ids)[:, None])[:, 0]
        assert torch.allclose(rescored, torch.tensor(call.logprobs), atol=1e-4), (rescored, call.logprobs)


@pytest.mark.slow
def test_finished_episodes_form_groups_and_the_run_trains_on_them_to_version_two(
    proxy: Proxy, run: RunHandle, server: Any, valkey_url: str
) -> None:
    llm = openai_client(proxy, server.keys["a"])
    settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1)
    r = redis.Redis.from_url(valkey_url)
    trainer = TrainerWorker(settings, redis_client=r, block_ms=100)
    groups: list[TrajectoryGroup] = []
    try:
        for version in (1, 2):
            for i, reward in enumerate((1.0, 0.0)):
                session = f"v{version}-e{i}"
                replies = agent_episode(llm, run.run_id, session)
                finished = run.finish_episode(
                    session, reward, task_key="add-2-3", components={"correct": reward}
                )
                assert finished.trajectories == 1 and finished.model_tokens > 0
                assert finished.pending_in_group == (1 - i) and bool(finished.group_id) == (i == 1)
                assert replies[-1].model == f"{run.run_id}@v{version - 1}"
            queued = r.xrange(groups_stream(run.run_id))
            groups += [from_json(TrajectoryGroup, fields[b"data"]) for _, fields in queued[-1:]]
            assert any(trainer.train_once(run.run_id) for _ in range(20))
            assert run.wait_for_version(version, timeout=30).version == version
    finally:
        trainer.close()
    assert [g.metadata["task_key"] for g in groups] == ["add-2-3", "add-2-3"]
    trajectory = groups[0].trajectories[0]
    assert trajectory.reward == 1.0 and trajectory.reward_components == {"correct": 1.0}
    assert 0 in trajectory.loss_mask and 1 in trajectory.loss_mask  # environment and model tokens
    assert run.refresh().version == 2


@pytest.mark.slow
def test_a_rewritten_history_splits_the_episode_and_each_session_is_taken_once(
    proxy: Proxy, run: RunHandle, server: Any
) -> None:
    llm = openai_client(proxy, server.keys["a"])
    llm.chat.completions.create(model=run.run_id, messages=TASK, user="rewrite-1", max_tokens=4)
    rewritten = [TASK[0], {"role": "user", "content": "Forget that. What is 1 plus 1?"}]
    llm.chat.completions.create(model=run.run_id, messages=rewritten, user="rewrite-1", max_tokens=4)
    finished = run.finish_episode("rewrite-1", 1.0, task_key="rewrite")
    assert finished.trajectories == 2
    with pytest.raises(NotFound, match="no calls recorded for session 'rewrite-1'"):
        run.finish_episode("rewrite-1", 1.0, task_key="rewrite")


@pytest.mark.slow
def test_refusals_say_what_to_fix(proxy: Proxy, run: RunHandle, server: Any) -> None:
    llm = openai_client(proxy, server.keys["a"])
    with pytest.raises(openai.BadRequestError, match="x-policyopt-session"):
        llm.chat.completions.create(model=run.run_id, messages=TASK)
    with pytest.raises(openai.BadRequestError, match="stream=true is not supported"):
        llm.chat.completions.create(model=run.run_id, messages=TASK, user="s", stream=True)
    with pytest.raises(openai.AuthenticationError, match="API key not recognised"):
        openai_client(proxy, "wrong").chat.completions.create(model=run.run_id, messages=TASK, user="s")
    with pytest.raises(openai.NotFoundError, match="does not exist"):  # tenant b does not see a's run
        openai_client(proxy, server.keys["b"]).chat.completions.create(
            model=run.run_id, messages=TASK, user="s"
        )
    assert [m.id for m in llm.models.list()] == [run.run_id]
    with pytest.raises(NotFound, match="no calls recorded"):
        run.finish_episode("never-used", 1.0)
    run.cancel()
    with pytest.raises(FailedPrecondition, match="takes no more episodes"):
        run.finish_episode("never-used", 1.0)
    with pytest.raises(openai.ConflictError, match="samples for running runs"):
        llm.chat.completions.create(model=run.run_id, messages=TASK, user="s")


@pytest.mark.slow
def test_the_example_agent_runs_unmodified_through_the_proxy_and_finishes_its_episodes(
    proxy: Proxy, run: RunHandle, server: Any
) -> None:
    example = load_example("agent_proxy")
    llm = openai_client(proxy, server.keys["a"])
    rewards = [example.episode(llm, run, 3, 4) for _ in range(2)]  # group_size 2: one group
    assert all(r in (0.0, 0.2, 1.0, 1.2) for r in rewards)
    assert example.calculator("3 * 4") == "12" and example.calculator("__import__('os')").startswith("error")
    assert example.score([{"role": "tool"}, {"role": "assistant", "content": "ANSWER: 12"}], 12) == (
        1.2,
        {"correct": 1.0, "used_tool": 1.0},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": "hi", "user": "s"}', "non-empty list"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "user": "s", "tools": [{"type": "x"}]}',
            "tools[0]",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "s", "max_tokens": -3}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "s", "n": 2}', "n must be 1"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "a b"}', "session id"),
    ],
)
def test_malformed_requests_are_400_with_the_reason_in_openais_error_shape(
    proxy: Proxy, server: Any, body: bytes, expected: str
) -> None:
    request = urllib.request.Request(
        f"{proxy.base_url}/chat/completions",
        data=body,
        headers={"authorization": f"Bearer {server.keys['a']}", "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
