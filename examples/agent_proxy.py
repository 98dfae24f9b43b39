"""An unmodified OpenAI SDK tool-calling agent, trained through ``policyopt proxy``.

The agent is the plain chat-completions loop any OpenAI tutorial shows: it declares a ``calculator``
tool, runs the calls the model makes and sends the results back as ``tool`` messages until the model
answers. Nothing in the loop knows about training; only ``base_url`` (the proxy), ``api_key`` (the
tenant's key) and ``user`` (the episode's session id) point it at policyopt. After each episode the
script scores the answer and calls ``run.finish_episode(session, reward, task_key=question, components=...)``;
the proxy recorded every call's token ids and log-probs, so the episodes become trajectories as sampled,
and every ``group_size`` episodes of one question form a group the trainer learns from.

Run it (policyopt up in one terminal; proxy in another)::

    POLICYOPT_MODEL_ROOTS=$(dirname MODEL_DIR) policyopt up
    python examples/agent_proxy.py create --model MODEL_DIR          # prints RUN
    policyopt proxy --run RUN --port 8001                             # REDIS_URL as `policyopt up` printed
    python examples/agent_proxy.py train --run RUN --base-url http://127.0.0.1:8001/v1 --episodes 64

Add ``--api-key KEY`` (and ``POLICYOPT_API_KEY`` for the proxy's clients) when the server has keys.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import uuid
from typing import Any

import openai

from policyopt.client import Client, RunHandle

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression with + - * and integers.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
SYSTEM = "Answer arithmetic questions. Use the calculator tool, then reply with ANSWER: <number>."
MAX_TURNS = 4


def calculator(expression: str) -> str:
    """The tool: integers with + - * only (no eval of anything else)."""
    if not re.fullmatch(r"[0-9+\-* ()]{1,64}", expression):
        return "error: only integers, + - * and parentheses"
    try:
        return str(eval(expression, {"__builtins__": {}}))  # noqa: S307 - the pattern above allows arithmetic only
    except (SyntaxError, ValueError):
        return "error: not an expression"


def run_agent(llm: openai.OpenAI, model: str, question: str, session: str, max_tokens: int = 64) -> list[Any]:
    """The agent loop: ask, run the tools the model calls, stop at an answer. Returns the messages."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    for _ in range(MAX_TURNS):
        reply = llm.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, user=session, max_tokens=max_tokens
        )
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments or "{}")
            result = calculator(str(arguments.get("expression", "")))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return messages


def score(messages: list[Any], answer: int) -> tuple[float, dict[str, float]]:
    """Reward 1.0 for the right answer, 0.2 for using the calculator; components name both."""
    final = str(messages[-1].get("content") or "")
    correct = float(bool(re.search(rf"ANSWER:\s*{answer}\b", final)))
    used_tool = float(any(m.get("role") == "tool" for m in messages))
    return correct + 0.2 * used_tool, {"correct": correct, "used_tool": used_tool}


def episode(llm: openai.OpenAI, run: RunHandle, a: int, b: int) -> float:
    """One episode of ``a * b``: the agent runs through the proxy, then the episode is finished."""
    question, session = f"What is {a} * {b}?", f"ep-{uuid.uuid4().hex[:12]}"
    messages = run_agent(llm, run.run_id, question, session)
    reward, components = score(messages, a * b)
    run.finish_episode(session, reward, task_key=question, components=components)
    return reward


def main() -> None:
    parser = argparse.ArgumentParser(description="Train an OpenAI SDK agent through policyopt proxy")
    parser.add_argument("command", choices=("create", "train"))
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", help="create: the base model (a directory under POLICYOPT_MODEL_ROOTS)")
    parser.add_argument("--run", help="train: the run the proxy serves")
    parser.add_argument("--base-url", default="http://127.0.0.1:8001/v1", help="train: the proxy")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=4)
    args = parser.parse_args()
    with Client(args.address, api_key=args.api_key) as client:
        if args.command == "create":
            run = client.create_run(
                args.model, method="agentic_grpo", group_size=args.group_size, prompts_per_step=2,
                correctness_component="correct", sample_every=5,
            )  # fmt: skip
            print(run.run_id)
            return
        run = client.get_run(args.run)
        llm = openai.OpenAI(base_url=args.base_url, api_key=args.api_key or "none")
        rng = random.Random(0)
        for i in range(0, args.episodes, args.group_size):
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            rewards = [episode(llm, run, a, b) for _ in range(args.group_size)]
            print(
                f"episodes {i + args.group_size}: {a} * {b}: rewards {rewards} (run at v{run.refresh().version})"
            )


if __name__ == "__main__":
    main()
