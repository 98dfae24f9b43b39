"""The ranges of everything a tenant sets on a run, checked at CreateRun, with messages naming the range.

Operator settings (``core/settings.py``) bound what costs the service memory or time per step; the
constants below bound values that are never useful beyond them and only let one run hog a worker.
A message names the allowed range, and the environment variable when an operator setting sets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import ENDPOINT_NAME_RULE, is_endpoint_name, quote
from policyopt.core.settings import Settings
from policyopt.core.types import RunConfig

ENGINES = ("transformers", "vllm")

MAX_LORA_RANK = 256
"""LoRA rank: beyond 256 an adapter approaches full fine-tuning in memory and stops being an adapter."""
MAX_LORA_ALPHA = 4096
"""LoRA alpha (the update is scaled by alpha / rank): 4096 is 16x the largest rank, far past useful."""
MAX_TEMPERATURE = 10.0
"""Sampling temperature: at 10 the distribution is close to uniform, so samples are noise."""
MAX_LEARNING_RATE = 1.0
"""Adam steps of size 1 on LoRA weights diverge at once; useful rates are 1e-6 to 1e-3."""
MAX_STALENESS = 16
"""Adapter versions a rollout may lag the trainer; beyond 16 importance ratios are meaningless."""
MAX_EPOCHS = 16
"""``trajectory_side.epochs``: passes over each batch (PPO reuse); more only drifts off-policy."""
MAX_MINI_BATCHES = 64
"""``trajectory_side.mini_batches``: optimizer steps per epoch (also at most the sequences per step)."""
MAX_EXTRA_ROUNDS = 16
"""``reward_side.group_filter.max_extra_rounds``: refill rounds of dynamic sampling per batch."""
MAX_TARGET_MODULES = 64
"""Names in ``lora.target_modules``; a model has a few kinds of layer, each named once."""
MIN_GROUP_SIZE = 2
"""Completions per prompt are compared against each other, so a group needs two."""

# method field (as the tenant overrides it) -> (lowest, highest)
METHOD_RANGES: Mapping[str, tuple[int, int]] = {
    "trajectory_side.epochs": (1, MAX_EPOCHS),
    "trajectory_side.mini_batches": (1, MAX_MINI_BATCHES),
    "reward_side.group_filter.max_extra_rounds": (0, MAX_EXTRA_ROUNDS),
}


def _in_range(name: str, value: float, low: float, high: float, setting: str = "") -> tuple[bool, str]:
    """(value in [low, high], the message saying so)."""
    source = f" (the server's {setting})" if setting else ""
    return low <= value <= high, f"{name} must be in [{low}, {high}]{source}, got {value}"


def _sizes(config: RunConfig, settings: Settings) -> list[tuple[bool, str]]:
    """Group, step and completion sizes: what one policy update costs the workers."""
    sequences = config.group_size * config.prompts_per_step
    return [
        _in_range("group_size", config.group_size, MIN_GROUP_SIZE, settings.max_group_size,
                  "POLICYOPT_MAX_GROUP_SIZE"),
        _in_range("prompts_per_step", config.prompts_per_step, 1, settings.max_prompts_per_step,
                  "POLICYOPT_MAX_PROMPTS_PER_STEP"),
        (sequences <= settings.max_sequences_per_step,
         f"group_size * prompts_per_step is {sequences} sequences per step and must be at most "
         f"{settings.max_sequences_per_step} (the server's POLICYOPT_MAX_SEQUENCES_PER_STEP); lower either"),
        _in_range("max_new_tokens", config.max_new_tokens, 1, settings.max_completion_tokens,
                  "POLICYOPT_MAX_COMPLETION_TOKENS"),
        (config.max_steps >= 0, f"max_steps must be >= 0 (0: as long as prompts arrive), got {config.max_steps}"),
        _in_range("max_staleness", config.max_staleness, 0, MAX_STALENESS),
    ]  # fmt: skip


def _sampling_and_training(config: RunConfig) -> list[tuple[bool, str]]:
    """Sampling, optimizer and LoRA values; NaN fails every comparison, so it is out of range too."""
    return [
        (0 < config.temperature <= MAX_TEMPERATURE,
         f"temperature must be in (0, {MAX_TEMPERATURE}], got {config.temperature}; 0 (greedy) is refused "
         "because a group of identical greedy completions has no reward variance to learn from"),
        (0 < config.top_p <= 1, f"top_p must be in (0, 1], got {config.top_p}"),
        (0 < config.learning_rate <= MAX_LEARNING_RATE,
         f"learning_rate must be finite and in (0, {MAX_LEARNING_RATE}], got {config.learning_rate}"),
        _in_range("lora.rank", config.lora_rank, 1, MAX_LORA_RANK),
        _in_range("lora.alpha", config.lora_alpha, 1, MAX_LORA_ALPHA),
        (0 <= config.lora_dropout < 1, f"lora.dropout must be in [0, 1), got {config.lora_dropout}"),
        (len(config.lora_target_modules) <= MAX_TARGET_MODULES,
         f"lora.target_modules has {len(config.lora_target_modules)} names; give at most {MAX_TARGET_MODULES} "
         "(a name matches that layer in every block, e.g. q_proj)"),
    ]  # fmt: skip


def validate_run_config(config: RunConfig, settings: Settings) -> None:
    """Every numeric range and name of a run's configuration that needs no model (see module doc).

    The method's own ranges are checked by ``validate_method_counts`` once it is resolved, and what
    depends on the base model (context, module names) by ``validation.ModelChecker``.
    """
    checks = [
        (bool(config.base_model),
         "base_model is empty: give a model directory readable by the workers, 'tiny' or 'smollm2'"),
        *_sizes(config, settings),
        *_sampling_and_training(config),
        (config.engine in ENGINES, f"engine must be one of {list(ENGINES)}, got {quote(config.engine)}"),
        (not config.reward_endpoint or is_endpoint_name(config.reward_endpoint),
         f"reward_endpoint {quote(config.reward_endpoint)} is not an endpoint name: {ENDPOINT_NAME_RULE}"),
    ]  # fmt: skip
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise InvalidArgument("; ".join(problems))


def validate_method_counts(counts: Mapping[str, int], sequences_per_step: int) -> None:
    """The resolved method's counts (``methods.counts``) against ``METHOD_RANGES``; mini-batches must
    also leave at least one sequence each (``sequences_per_step`` is group_size * prompts_per_step)."""
    problems = []
    for name, (low, high) in METHOD_RANGES.items():
        value = counts[name]
        if not low <= value <= high:
            problems.append(f"method.{name} must be in [{low}, {high}], got {value}")
    mini_batches = counts["trajectory_side.mini_batches"]
    if mini_batches > sequences_per_step:
        problems.append(
            f"method.trajectory_side.mini_batches is {mini_batches} but a step has only {sequences_per_step} "
            "sequences (group_size * prompts_per_step); use at most that many mini-batches"
        )
    if problems:
        raise InvalidArgument("; ".join(problems))


def validate_reward_timeout(timeout_s: float, settings: Settings) -> None:
    """RegisterRewardEndpoint ``timeout_s``: 0 takes the service default, else at most the operator's cap."""
    if not (math.isfinite(timeout_s) and 0 <= timeout_s <= settings.max_reward_timeout_s):
        raise InvalidArgument(
            f"timeout_s must be finite and in [0, {settings.max_reward_timeout_s}] seconds (the server's "
            f"POLICYOPT_MAX_REWARD_TIMEOUT_S; 0: the default of {settings.reward_timeout_s}), got {timeout_s}"
        )
