"""Every value a tenant sets has an upper bound too: over it, INVALID_ARGUMENT naming the allowed range."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from policyopt.client import Client, InvalidArgument, RewardServer
from policyopt.core.settings import Settings
from policyopt.core.types import RunConfig
from policyopt.server.bounds import validate_method_counts, validate_reward_timeout, validate_run_config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_size": 4096}, r"group_size must be in \[2, 64\] \(the server's POLICYOPT_MAX_GROUP_SIZE\)"),
        ({"prompts_per_step": 65}, r"prompts_per_step must be in \[1, 64\] .*POLICYOPT_MAX_PROMPTS_PER_STEP"),
        (
            {"group_size": 64, "prompts_per_step": 64},
            r"4096 sequences per step and must be at most 512 .*POLICYOPT_MAX_SEQUENCES_PER_STEP",
        ),
        (
            {"max_new_tokens": 5000},
            r"max_new_tokens must be in \[1, 4096\] .*POLICYOPT_MAX_COMPLETION_TOKENS",
        ),
        ({"max_new_tokens": 512}, r"smaller than the context .* \(512 tokens.*use at most 511"),
        ({"lora_rank": 257}, r"lora.rank must be in \[1, 256\]"),
        ({"lora_alpha": 5000}, r"lora.alpha must be in \[1, 4096\]"),
        ({"lora_dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
        ({"max_staleness": 17}, r"max_staleness must be in \[0, 16\]"),
        ({"temperature": 0.0}, r"temperature must be in \(0, 10.0\].*no reward variance"),
        ({"temperature": 11.0}, r"temperature must be in \(0, 10.0\]"),
        ({"temperature": math.nan}, r"temperature must be in \(0, 10.0\], got nan"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"learning_rate": math.inf}, r"learning_rate must be finite and in \(0, 1.0\], got inf"),
        ({"learning_rate": math.nan}, r"learning_rate must be finite and in \(0, 1.0\], got nan"),
        ({"learning_rate": 2.0}, r"learning_rate must be finite and in \(0, 1.0\]"),
        (
            {"trajectory_side": {"epochs": 100000}},
            r"method.trajectory_side.epochs must be in \[1, 16\], got 100000",
        ),
        (
            {"trajectory_side": {"mini_batches": 65}},
            r"method.trajectory_side.mini_batches must be in \[1, 64\]",
        ),
        (
            {"group_size": 2, "prompts_per_step": 2, "trajectory_side": {"mini_batches": 8}},
            r"mini_batches is 8 but a step has only 4 sequences",
        ),
        (
            {"reward_side": {"group_filter": {"name": "zero_variance", "max_extra_rounds": 17}}},
            r"method.reward_side.group_filter.max_extra_rounds must be in \[0, 16\], got 17",
        ),
        ({"teacher_model": "x", "teacher_coef": math.inf, "method": "opd"}, r"teacher.coef .* finite"),
    ],
)
def test_values_over_their_bound_are_invalid_with_the_range(
    client_a: Client, tiny_model_dir: Path, options: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        client_a.create_run(str(tiny_model_dir), **options)


def test_every_problem_of_a_config_is_named_at_once() -> None:
    config = RunConfig(base_model="tiny", group_size=4096, lora_rank=1000, temperature=0.0)
    with pytest.raises(InvalidArgument) as raised:
        validate_run_config(config, Settings())
    assert all(name in str(raised.value) for name in ("group_size", "lora.rank", "temperature"))


def test_bounds_follow_the_operator_settings() -> None:
    small = Settings(max_group_size=8, max_prompts_per_step=2, max_sequences_per_step=12)
    with pytest.raises(InvalidArgument, match=r"group_size must be in \[2, 8\]"):
        validate_run_config(RunConfig(base_model="tiny", group_size=9, prompts_per_step=1), small)
    with pytest.raises(InvalidArgument, match="16 sequences per step and must be at most 12"):
        validate_run_config(RunConfig(base_model="tiny", group_size=8, prompts_per_step=2), small)
    validate_run_config(RunConfig(base_model="tiny", group_size=6, prompts_per_step=2), small)


def test_the_largest_allowed_values_are_accepted() -> None:
    config = RunConfig(
        base_model="tiny", group_size=8, prompts_per_step=64, max_new_tokens=4096, temperature=10.0,
        top_p=1.0, learning_rate=1.0, lora_rank=256, lora_alpha=4096, max_staleness=16,
    )  # fmt: skip
    validate_run_config(config, Settings())
    counts = {
        "trajectory_side.epochs": 16,
        "trajectory_side.mini_batches": 64,
        "reward_side.group_filter.max_extra_rounds": 16,
    }
    validate_method_counts(counts, sequences_per_step=64)
    validate_reward_timeout(120.0, Settings())
    validate_reward_timeout(0.0, Settings())


@pytest.mark.parametrize("names", [["no_such_module"], ["q_proj", "mlp"], ["layers"]])
def test_lora_target_modules_must_name_layers_lora_can_adapt(
    client_a: Client, tiny_model_dir: Path, names: list[str]
) -> None:
    with pytest.raises(InvalidArgument, match=r"name no layer .*valid names: .*down_proj.*q_proj") as raised:
        client_a.create_run(str(tiny_model_dir), lora_target_modules=names)
    assert "q_proj'" not in str(raised.value).split("valid names")[0]  # only the bad names are named


def test_lora_target_modules_by_leaf_or_full_name_are_accepted(
    client_a: Client, tiny_model_dir: Path
) -> None:
    names = ["gate_proj", "up_proj", "down_proj", "model.layers.0.self_attn.q_proj"]
    run = client_a.create_run(str(tiny_model_dir), lora_target_modules=names)
    assert list(run.info.lora_target_modules) == names


@pytest.mark.parametrize("timeout_s", [121.0, math.inf, math.nan, -1.0])
def test_a_reward_timeout_outside_the_range_is_invalid(
    client_a: Client, reward_endpoint: RewardServer, timeout_s: float
) -> None:
    with pytest.raises(InvalidArgument, match=r"timeout_s must be finite and in \[0, 120.0\] seconds .*"
                       "POLICYOPT_MAX_REWARD_TIMEOUT_S"):  # fmt: skip
        client_a.register_reward_endpoint("slow", reward_endpoint.address, timeout_s=timeout_s)
    endpoint = client_a.register_reward_endpoint("slow", reward_endpoint.address, timeout_s=120.0)
    assert endpoint.timeout_s == 120.0
