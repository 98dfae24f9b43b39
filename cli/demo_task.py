"""The built-in task of ``policyopt demo``: small additions, answered with just the number.

SmolLM2-135M-Instruct answers "What is 3 + 2? Reply with just the number." with a sentence ("3 + 2 is 5.",
"The answer would be 5, although ...") and almost never with the bare number, so the reward starts low
but not at zero. Partial credit shrinks with the length of the reply, so completions of one prompt
differ in reward (GRPO's group-relative advantage needs that) and the shortest correct reply, the bare
number, is where the gradient points:

    1.0                         the reply is exactly the right number ("5", "5." or " 5 ")
    0.1                         the reply is a bare number, but the wrong one
    0.5 * (1 - chars / 64)      the right number appears among other text (chars: reply length, capped)
    0.0                         anything else
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from policyopt.core.types import JSONValue

_BARE_NUMBER = re.compile(r"^\s*(-?\d+)\s*\.?\s*$")
_ANY_NUMBER = re.compile(r"-?\d+")

EVAL_PAIRS = ((2, 7), (3, 5), (4, 8), (5, 9), (6, 3), (7, 7), (8, 1), (9, 4))
"""The held-out questions of the eval set: the training stream re-draws these."""

REWARD_EXACT = 1.0
REWARD_BARE_WRONG = 0.1
REWARD_CONTAINS = 0.5
LENGTH_SCALE_CHARS = 64


def score_answer(completion: str, answer: str) -> float:
    """The task's reward for one completion, given the expected answer (see the module docstring)."""
    bare = _BARE_NUMBER.match(completion)
    if bare:
        return REWARD_EXACT if bare.group(1) == answer else REWARD_BARE_WRONG
    if answer in _ANY_NUMBER.findall(completion):
        brevity = max(0.0, 1.0 - len(completion.strip()) / LENGTH_SCALE_CHARS)
        return REWARD_CONTAINS * brevity
    return 0.0


@dataclass
class DemoTask:
    """Prompt generator and reward function for the demo; deterministic for a given seed."""

    seed: int = 0
    max_operand: int = 9
    description: str = (
        "add two numbers from 1 to 9 and reply with just the number "
        "(1: exact; partial credit for the right number in a shorter reply)"
    )
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def prompts(self, n: int) -> tuple[list[str], list[dict[str, JSONValue]]]:
        """``n`` fresh questions and their metadata (``{"answer": "12"}``); never one of the eval set."""
        prompts, metadata = [], []
        for _ in range(n):
            a, b = self._rng.randint(1, self.max_operand), self._rng.randint(1, self.max_operand)
            while (a, b) in EVAL_PAIRS:
                a, b = self._rng.randint(1, self.max_operand), self._rng.randint(1, self.max_operand)
            prompts.append(f"What is {a} + {b}? Reply with just the number.")
            metadata.append({"answer": str(a + b)})
        return prompts, metadata

    def eval_set(self) -> tuple[list[str], list[dict[str, JSONValue]]]:
        """The held-out questions (``EVAL_PAIRS``), which ``prompts`` never asks."""
        questions = [f"What is {a} + {b}? Reply with just the number." for a, b in EVAL_PAIRS]
        return questions, [{"answer": str(a + b)} for a, b in EVAL_PAIRS]

    def score(self, prompt: str, completions: list[str], metadata: dict[str, JSONValue]) -> list[float]:
        """Batch form for ``RewardServer(task.score, batch=True)``: one score per completion."""
        answer = str(metadata.get("answer", ""))
        return [score_answer(c, answer) for c in completions]


@dataclass
class DigitsTask:
    """The ``--model tiny`` task: a random tiny model cannot add, but it can learn to emit digits.

    Reward: the share of the reply's non-space characters that are digits (0 to 1). Rollouts of a
    random model differ in it, so GRPO has a signal from the first step.
    """

    seed: int = 0
    description: str = "reply with digits only (reward: the share of the reply's characters that are digits)"
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def prompts(self, n: int) -> tuple[list[str], list[dict[str, JSONValue]]]:
        prompts = [f"Give me a number near {self._rng.randint(1, 99)}." for _ in range(n)]
        return prompts, [{} for _ in prompts]

    def eval_set(self) -> tuple[list[str], list[dict[str, JSONValue]]]:
        """Held-out prompts: numbers above 100, which ``prompts`` never asks for."""
        prompts = [f"Give me a number near {n}." for n in range(105, 185, 10)]
        return prompts, [{} for _ in prompts]

    def score(self, prompt: str, completions: list[str], metadata: dict[str, JSONValue]) -> list[float]:
        return [digit_share(c) for c in completions]


def digit_share(completion: str) -> float:
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


TASKS: dict[str, type[DemoTask] | type[DigitsTask]] = {"smollm2": DemoTask, "tiny": DigitsTask}
"""The demo's task for each ``--model``."""

__all__ = ["TASKS", "DemoTask", "DigitsTask", "digit_share", "score_answer"]
