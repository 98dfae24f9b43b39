"""An unmodified OpenAI tool-calling loop for the proxy tests, reading back what the proxy recorded, and a
tiny model fine-tuned to call a tool (the random one never samples a ``<tool_call>`` block)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import openai
import redis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from policyopt.core.types import from_json
from policyopt.state.episodes import RecordedCall
from policyopt.workers.proxy import Proxy

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        },
    }
]


def tool_loop(
    llm: openai.OpenAI, run_id: str, task: list[Any], session: str, turns: int = 2, seed: int | None = None
) -> list[Any]:
    """``turns`` calls: run the tools the model calls (each returns "5"), else ask it to go on. The replies.

    The session id goes in the ``x-policyopt-session`` header; ``seed`` (+ the turn) makes sampling repeatable.
    """
    messages: list[Any] = list(task)
    replies = []
    for turn in range(turns):
        reply = llm.chat.completions.create(
            model=run_id, messages=messages, tools=TOOLS, extra_headers={"x-policyopt-session": session},
            seed=None if seed is None else seed + turn,
        )  # fmt: skip
        replies.append(reply)
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "5"})
        if not message.tool_calls:
            messages.append({"role": "user", "content": "Go on."})
    return replies


@contextmanager
def running_proxy(server: Any, run_id: str, valkey_url: str) -> Iterator[Proxy]:
    """A transformers-engine proxy of ``run_id`` on a free port, fp32 and one thread (exact re-scoring)."""
    settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1, dtype="float32")
    with Proxy(
        settings, run_id, engine="transformers", port=0, redis_client=redis.Redis.from_url(valkey_url)
    ) as running:
        yield running


def recorded_calls(r: redis.Redis, run_id: str, session: str) -> list[RecordedCall]:
    """The calls the proxy recorded for a session (before FinishEpisode takes them)."""
    raw = r.lrange(f"po:run:{run_id}:session:{session}:calls", 0, -1)
    return [from_json(RecordedCall, item) for item in raw]


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A Hermes tool-call block, as the tiny model's chat template renders one."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def fine_tune_tool_caller(
    base_dir: Path, out_dir: Path, task: list[Any], completion: str, *, max_steps: int = 100
) -> Path:
    """The model in ``base_dir`` trained (full SFT, AdamW) to answer ``task`` rendered with ``TOOLS`` by
    ``completion`` + EOS, until greedy decoding reproduces it; saved with its tokenizer to ``out_dir``.

    The loss is on the completion only. About 20 steps on 2 threads (a few seconds) for the tiny model.
    """
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    encoded = tokenizer.apply_chat_template(
        task, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    prompt_ids = [int(i) for i in cast(Any, encoded)["input_ids"]]
    completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids_1_T = torch.tensor([prompt_ids + completion_ids])
    labels_1_T = ids_1_T.clone()
    labels_1_T[0, : len(prompt_ids)] = -100
    target_C = torch.tensor(completion_ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(max_steps):
            model.train()
            loss = model(input_ids=ids_1_T, labels=labels_1_T).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                logits_C_V = model(input_ids=ids_1_T).logits[0, len(prompt_ids) - 1 : -1]
            if loss.item() < 0.05 and bool((logits_C_V.argmax(-1) == target_C).all()):
                break
        else:
            raise AssertionError(f"the model did not learn the tool call in {max_steps} steps")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
