"""A tool-using agent trained end to end through policyopt: the model must call a calculator.

The task: "What is 37*12?". The model may write ``CALC: 37*12``; the agent loop runs the calculator and
appends its result as an environment (tool) turn; the model then answers ``ANSWER: 444``. The loop runs
in this client process against the served model (vLLM's OpenAI-compatible server, adapter ``RUN@vN``),
builds token-id trajectories with ``policyopt.client.agentic`` and submits groups of them with
``run.submit_trajectories``. The service trains ``agentic_grpo`` on them (tool tokens masked out of the
loss) and publishes adapter versions, which ``policyopt serving-sync`` loads into vLLM.

Run it (three terminals, or background them)::

    POLICYOPT_MODEL_ROOTS=$(dirname MODEL_DIR) policyopt up   # server + workers + embedded Valkey
    python -m vllm.entrypoints.openai.api_server --model MODEL_DIR --enable-lora ...  # see docs/vllm.md
    policyopt serving-sync --vllm http://127.0.0.1:8000
    python examples/calculator_agent.py --model MODEL_DIR --vllm http://127.0.0.1:8000 --steps 20

Reward: 1 for the right answer, 0.3 for a well-formed calculator call without it, plus a small share for
digits, so a small model has a gradient from the first step.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyopt.client import Client, Trajectory, TrajectoryGroup
from policyopt.client.agentic import (
    COMPLETION_FIELDS,
    ChatTemplateRenderer,
    TrajectoryBuilder,
    vllm_tokenizer,
)

Sampler = Callable[[list[int], str, int], Mapping[str, Any]]
"""``sample(context_ids, served_model_name, max_tokens)`` -> an OpenAI-compatible completion response."""

INSTRUCTIONS = "Use the calculator: write CALC: <expression>. Then reply ANSWER: <number>."
_CALL = re.compile(r"CALC:\s*([0-9+\-*/(). ]{1,40})")
_ANSWER = re.compile(r"ANSWER:\s*(-?\d+)")


def calculate(expression: str) -> str:
    """The tool: integer arithmetic on digits, + - * / and parentheses (nothing else is evaluated)."""
    if not re.fullmatch(r"[0-9+\-*/(). ]+", expression):
        return "error: only digits and + - * / ( ) are allowed"
    try:
        value = eval(expression, {"__builtins__": {}}, {})  # noqa: S307 - the regex admits arithmetic only
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError):
        return "error: not a valid expression"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a}*{self.b}? {INSTRUCTIONS}"

    def reward(self, model_texts: Sequence[str]) -> float:
        text = "".join(model_texts)
        answer = _ANSWER.search(text)
        if answer is not None and int(answer.group(1)) == self.a * self.b:
            return 1.0
        called = 0.3 if _CALL.search(text) else 0.0
        chars = [c for c in text if not c.isspace()]
        return called + 0.1 * (sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0)


def run_episode(
    sample: Sampler,
    renderer: ChatTemplateRenderer,
    model_name: str,
    version: int,
    problem: Problem,
    max_turns: int = 2,
) -> Trajectory:
    """One agent episode of up to ``max_turns`` model turns. Between them the environment answers: the
    calculator's result for a ``CALC:`` call, else a reminder of the instructions; an answer ends it."""
    builder = TrajectoryBuilder(renderer.prompt_ids([{"role": "user", "content": problem.question}]))
    texts: list[str] = []
    for turn_number in range(max_turns):
        response = sample(builder.context_ids, model_name, 24)
        turn = builder.add_response(response, adapter_version=version)
        texts.append(str(response["choices"][0].get("text", "")))
        if _ANSWER.search(texts[-1]) or turn_number == max_turns - 1:
            break
        call = _CALL.search(texts[-1])
        reply = calculate(call.group(1)) if call else f"no calculator call found. {INSTRUCTIONS}"
        builder.add_environment(
            renderer.environment_ids([{"role": "tool", "content": reply}], turn.token_ids)
        )
    return builder.build(problem.reward(texts))


def vllm_sampler(base_url: str, temperature: float = 1.0) -> Sampler:
    """``/v1/completions`` with the context as token ids, and the token ids and log-probs requested back."""

    def sample(context_ids: list[int], model_name: str, max_tokens: int) -> Mapping[str, Any]:
        body = {"model": model_name, "prompt": context_ids, "max_tokens": max_tokens,
                "temperature": temperature, **COMPLETION_FIELDS}  # fmt: skip
        request = urllib.request.Request(
            base_url.rstrip("/") + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            result: Mapping[str, Any] = json.loads(reply.read())
            return result

    return sample


def collect_groups(
    sample: Sampler,
    renderer: ChatTemplateRenderer,
    model_name: str,
    version: int,
    problems: Sequence[Problem],
    group_size: int,
) -> list[TrajectoryGroup]:
    """``group_size`` episodes of each problem with adapter ``version``, ready for ``submit_trajectories``."""
    return [
        TrajectoryGroup(
            [run_episode(sample, renderer, model_name, version, problem) for _ in range(group_size)],
            metadata={"a": problem.a, "b": problem.b},
        )
        for problem in problems
    ]


def served_base_name(base_url: str) -> str:
    with urllib.request.urlopen(base_url.rstrip("/") + "/v1/models", timeout=30) as reply:
        models = json.loads(reply.read())["data"]
    return str(next(m["id"] for m in models if not m.get("parent")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--vllm", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="base model directory (the one vLLM serves)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--problems-per-step", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(0)
    base_name = served_base_name(args.vllm)
    renderer = ChatTemplateRenderer(vllm_tokenizer(args.vllm, base_name))
    sample = vllm_sampler(args.vllm)
    with Client(args.server) as client:
        run = client.create_run(args.model, method="agentic_grpo", group_size=args.group_size,
                                prompts_per_step=args.problems_per_step, learning_rate=1e-4)  # fmt: skip
        for step in range(args.steps):
            name = f"{run.run_id}@v{step}" if step else base_name
            problems = [
                Problem(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(args.problems_per_step)
            ]
            groups = collect_groups(sample, renderer, name, step, problems, args.group_size)
            run.submit_trajectories(groups)
            mean = sum(t.reward for g in groups for t in g.trajectories) / (len(groups) * args.group_size)
            print(f"step {step}: sampled with {name}, mean reward {mean:.3f}")
            run.wait_for_version(step + 1, timeout=600)


if __name__ == "__main__":
    main()
