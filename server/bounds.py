"""The ranges of everything a tenant sets on a run, checked at CreateRun, with messages naming the range.

Operator settings (``core/settings.py``) bound what costs the service memory or time per step; the
constants below bound values that are never useful beyond them and only let one run hog a worker.
A message names the allowed range, and the environment variable when an operator setting sets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import (
    COMPONENT_NAME_RULE,
    ENDPOINT_NAME_RULE,
    is_component_name,
    is_endpoint_name,
    quote,
)
from policyopt.core.settings import Settings
from policyopt.core.types import RunConfig

ENGINES = ("transformers", "vllm")
PROMOTION_RULES = ("none", "beats_best", "threshold")

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
MAX_SAMPLE_EVERY = 100_000
"""``sample_every``: steps between SAMPLE events; 0 takes the server's POLICYOPT_SAMPLE_EVERY."""
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
        _in_range("sample_every", config.sample_every, 0, MAX_SAMPLE_EVERY),
        (not config.correctness_component or is_component_name(config.correctness_component),
         f"correctness_component {quote(config.correctness_component)} is not a component name "
         f"({COMPONENT_NAME_RULE}); give the name of a reward component your endpoint returns, e.g. correct"),
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


MAX_EVAL_EVERY = 1_000_000
"""``eval.every``: versions between evaluations."""
MAX_PATIENCE = 1000
"""``promotion.patience``: evaluations without a new best before the run ends."""
MAX_RETENTION = 1_000_000
"""``retention.keep_versions`` / ``keep_trainer_states``."""


def validate_evaluation(config: RunConfig, eval_prompts: int, settings: Settings) -> None:
    """``eval``, ``promotion`` and ``retention`` of a run with ``eval_prompts`` held-out prompts."""
    spec, rule, keep = config.eval, config.promotion, config.retention
    finite = all(math.isfinite(x) for x in (spec.temperature, spec.success_threshold, rule.margin,
                                            rule.threshold, rule.stop_at_metric or 0.0))  # fmt: skip
    checks = [
        (finite, "eval.temperature, eval.success_threshold and the promotion numbers must be finite"),
        (eval_prompts <= settings.max_eval_prompts,
         f"eval.prompts has {eval_prompts} prompts; a run holds at most {settings.max_eval_prompts} (the "
         "server's POLICYOPT_MAX_EVAL_PROMPTS); evaluate on a smaller held-out set"),
        _in_range("eval.every", spec.every, 0, MAX_EVAL_EVERY),
        _in_range("eval.samples", spec.samples, 1, settings.max_group_size, "POLICYOPT_MAX_GROUP_SIZE"),
        _in_range("eval.temperature", spec.temperature, 0, MAX_TEMPERATURE),
        (not spec.reward_endpoint or is_endpoint_name(spec.reward_endpoint),
         f"eval.reward_endpoint {quote(spec.reward_endpoint)} is not an endpoint name: {ENDPOINT_NAME_RULE}"),
        (rule.rule in PROMOTION_RULES,
         f"promotion.rule must be one of {list(PROMOTION_RULES)}, got {quote(rule.rule)}"),
        (rule.margin >= 0, f"promotion.margin must be >= 0, got {rule.margin}"),
        _in_range("promotion.patience", rule.patience, 0, MAX_PATIENCE),
        (not eval_prompts or bool(spec.reward_endpoint or config.reward_endpoint),
         "eval prompts are scored by a reward endpoint: set eval.reward_endpoint (or the run's reward_endpoint)"),
        (spec.every > 0 or (rule.rule == "none" and rule.stop_at_metric is None and not rule.patience),
         "promotion needs evaluations: set eval.prompts and eval.every (or leave promotion unset)"),
        _in_range("retention.keep_versions", keep.keep_versions, 0, MAX_RETENTION),
        _in_range("retention.keep_trainer_states", keep.keep_trainer_states, 0, MAX_RETENTION),
    ]  # fmt: skip
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise InvalidArgument("; ".join(problems))


def validate_reward_timeout(timeout_s: float, settings: Settings) -> None:
    """RegisterRewardEndpoint ``timeout_s``: 0 takes the service default, else at most the operator's cap."""
    if not (math.isfinite(timeout_s) and 0 <= timeout_s <= settings.max_reward_timeout_s):
        raise InvalidArgument(
            f"timeout_s must be finite and in [0, {settings.max_reward_timeout_s}] seconds (the server's "
            f"POLICYOPT_MAX_REWARD_TIMEOUT_S; 0: the default of {settings.reward_timeout_s}), got {timeout_s}"
        )
