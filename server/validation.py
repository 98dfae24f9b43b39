"""Checks on CreateRun and SubmitPrompts input, with messages that say what to fix."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice, RunConfig
from policyopt.workers.models import context_length, resolve_base_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ENGINES = ("transformers", "vllm")

# Resolves a run's method choice; raises InvalidArgument naming what is wrong.
MethodResolver = Callable[[MethodChoice], object]


def validate_run_config(config: RunConfig) -> None:
    """Numeric ranges and names of a run's configuration (the method is checked separately)."""
    checks: list[tuple[bool, str]] = [
        (bool(config.base_model), "base_model is empty: give a model directory readable by the workers, 'tiny' or 'smollm2'"),
        (config.group_size >= 2, f"group_size must be at least 2 (completions per prompt compared against each other), got {config.group_size}"),
        (config.prompts_per_step >= 1, f"prompts_per_step must be at least 1, got {config.prompts_per_step}"),
        (config.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {config.max_new_tokens}"),
        (config.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {config.temperature}"),
        (0 < config.top_p <= 1, f"top_p must be in (0, 1], got {config.top_p}"),
        (config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}"),
        (config.lora_rank >= 1, f"lora.rank must be at least 1, got {config.lora_rank}"),
        (config.lora_alpha >= 1, f"lora.alpha must be at least 1, got {config.lora_alpha}"),
        (0 <= config.lora_dropout < 1, f"lora.dropout must be in [0, 1), got {config.lora_dropout}"),
        (config.max_steps >= 0, f"max_steps must be >= 0 (0: as long as prompts arrive), got {config.max_steps}"),
        (config.max_staleness >= 0, f"max_staleness must be >= 0, got {config.max_staleness}"),
        (config.engine in ENGINES, f"engine must be one of {list(ENGINES)}, got {config.engine!r}"),
    ]  # fmt: skip
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise InvalidArgument("; ".join(problems))


def _prompt_length(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Tokens of ``text`` rendered as one user message with the model's chat template."""
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
    )
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded  # type: ignore[index]
    return len(ids)


class PromptLengthChecker:
    """Rejects prompts that do not fit the base model's context with ``max_new_tokens`` to spare.

    Tokenizers load once per model directory and are shared by all calls.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[PreTrainedTokenizerBase, int]] = {}

    def model(self, base_model: str) -> tuple[PreTrainedTokenizerBase, int]:
        """(tokenizer, context length) of ``base_model``; InvalidArgument when it cannot be resolved."""
        with self._lock:
            if base_model not in self._cache:
                from transformers import AutoTokenizer

                model_dir = resolve_base_model(base_model, self._data_dir)
                try:
                    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
                except (OSError, ValueError) as exc:
                    raise InvalidArgument(
                        f"base_model {base_model!r} has no loadable tokenizer ({exc}); save one beside the weights"
                    ) from exc
                self._cache[base_model] = (tokenizer, context_length(model_dir))
            return self._cache[base_model]

    def check(self, config: RunConfig, prompts: Sequence[str]) -> None:
        tokenizer, context = self.model(config.base_model)
        budget = context - config.max_new_tokens
        for index, text in enumerate(prompts):
            length = _prompt_length(tokenizer, text)
            if length > budget:
                raise InvalidArgument(
                    f"prompt {index} is {length} tokens with the chat template, and with max_new_tokens="
                    f"{config.max_new_tokens} it exceeds the model's context of {context} tokens; "
                    f"shorten it to at most {max(budget, 0)} tokens or create the run with a smaller max_new_tokens"
                )
