"""pass@k, OPO and GPG: hand-computed advantages, loop-vs-vectorized checks and invariants."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs
from policyopt.workers.algorithms.reward_side.estimators import GRPOParams
from policyopt.workers.algorithms.reward_side.group_estimators import GPGParams, PassAtKParams


def scored_inputs(
    scores: list[float], groups: list[int], lengths: list[int] | None = None
) -> AdvantageInputs:
    """Sequence i has ``lengths[i]`` trained tokens (default 1) and its score on the last of them."""
    lengths = lengths or [1] * len(scores)
    width = max(lengths)
    mask_B_T = torch.zeros(len(scores), width, dtype=torch.float64)
    rewards_B_T = torch.zeros_like(mask_B_T)
    for i, (score, length) in enumerate(zip(scores, lengths, strict=True)):
        mask_B_T[i, :length] = 1.0
        rewards_B_T[i, length - 1] = score
    return AdvantageInputs(rewards_B_T, mask_B_T, torch.tensor(groups))


def sequence_advantages(name: str, inputs: AdvantageInputs, params: object = None) -> torch.Tensor:
    """One advantage per sequence, checked to be the same on every trained token."""
    entry = ADVANTAGE_ESTIMATORS.get(name)
    advantages_B_T = entry.fn(inputs, params if params is not None else entry.params_type()).advantages_B_T
    first_B = advantages_B_T[:, 0]
    torch.testing.assert_close(advantages_B_T, first_B.unsqueeze(-1) * inputs.mask_B_T)
    return first_B


def random_inputs(seed: int, size: int = 40, groups: int = 7, equal_lengths: bool = False) -> AdvantageInputs:
    """Integer scores 0..3 (so ties are common), groups of uneven size, lengths 1..5 (or all 3)."""
    rng = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (size,), generator=rng).double().tolist()
    group_ids = torch.randint(0, groups, (size,), generator=rng).tolist()
    lengths = [3] * size if equal_lengths else torch.randint(1, 6, (size,), generator=rng).tolist()
    return scored_inputs(scores, group_ids, lengths)


def members(inputs: AdvantageInputs) -> dict[int, list[int]]:
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(inputs.group_index_B.tolist()):
        by_group.setdefault(g, []).append(i)
    return by_group


def scores_of(inputs: AdvantageInputs) -> list[float]:
    return (inputs.token_rewards_B_T * inputs.mask_B_T).sum(-1).tolist()


# -- pass_at_k ---------------------------------------------------------------------------------------------


PASS_AT_K_SCORES = [3.0, 1.0, 2.0, 1.0, 0.0, 0.0, 1.0, 5.0, 0.5, 0.0]
PASS_AT_K_GROUPS = [0, 0, 0, 1, 1, 1, 1, 2, 3, 3]


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        # group 0: best 3, runner-up 2, margin 1, std of (3, 1, 2) = 1. group 1: 1 ties with 1: all 0.
        # group 2: one member, 0. group 3: margin 0.5, std of (0.5, 0) = sqrt(0.125), 0.5 / sqrt(0.125) = sqrt 2.
        ("group_std", [1.0, 0, 0, 0, 0, 0, 0, 0, math.sqrt(2.0), 0]),
        ("none", [1.0, 0, 0, 0, 0, 0, 0, 0, 0.5, 0]),
    ],
)
def test_pass_at_k_matches_hand_computed_advantages(scale: str, expected: list[float]) -> None:
    inputs = scored_inputs(PASS_AT_K_SCORES, PASS_AT_K_GROUPS, lengths=[2] * 10)
    advantages_B = sequence_advantages("pass_at_k", inputs, PassAtKParams(scale=scale, eps=1e-12))
    torch.testing.assert_close(advantages_B, torch.tensor(expected, dtype=torch.float64))


def pass_at_k_by_loop(inputs: AdvantageInputs, params: PassAtKParams) -> list[float]:
    scores = scores_of(inputs)
    advantages = [0.0] * len(scores)
    for rows in members(inputs).values():
        if len(rows) < 2:
            continue
        ranked = sorted(rows, key=lambda i: scores[i], reverse=True)
        margin = scores[ranked[0]] - scores[ranked[1]]
        if params.scale == "group_std":
            margin /= statistics.stdev(scores[i] for i in rows) + params.eps
        advantages[ranked[0]] = margin
    return advantages


@pytest.mark.parametrize("scale", ["group_std", "none"])
def test_pass_at_k_vectorized_matches_loop(scale: str) -> None:
    for seed in range(5):
        inputs = random_inputs(seed)
        params = PassAtKParams(scale=scale)
        expected = torch.tensor(pass_at_k_by_loop(inputs, params), dtype=torch.float64)
        torch.testing.assert_close(sequence_advantages("pass_at_k", inputs, params), expected)


def test_pass_at_k_gives_at_most_one_nonnegative_nonzero_per_group_on_its_best() -> None:
    for seed in range(5):
        inputs = random_inputs(seed, size=60)
        advantages = sequence_advantages("pass_at_k", inputs).tolist()
        scores = scores_of(inputs)
        for rows in members(inputs).values():
            nonzero = [i for i in rows if advantages[i] != 0.0]
            assert len(nonzero) <= 1
            for i in nonzero:
                assert advantages[i] > 0
                assert scores[i] == max(scores[j] for j in rows)
                assert sorted(scores[j] for j in rows).count(scores[i]) == 1  # a unique best


# -- opo ---------------------------------------------------------------------------------------------------


def test_opo_subtracts_the_length_weighted_group_mean() -> None:
    # group 0: scores 1, 0 with 1 and 3 tokens: b = (1*1 + 3*0) / 4 = 0.25.
    # group 1: scores 2, 4, 0 with 2, 2, 4 tokens: b = (4 + 8 + 0) / 8 = 1.5. group 2: one member, 0.
    inputs = scored_inputs([1, 0, 2, 4, 0, 7], [0, 0, 1, 1, 1, 2], lengths=[1, 3, 2, 2, 4, 2])
    expected = torch.tensor([0.75, -0.25, 0.5, 2.5, -1.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sequence_advantages("opo", inputs), expected)


def test_opo_counts_trained_tokens_only() -> None:
    inputs = scored_inputs([1.0, 0.0], [0, 0], lengths=[3, 1])
    inputs.mask_B_T[0, 1] = 0.0  # an environment token: sequence 0 has 2 trained tokens, b = 2/3
    torch.testing.assert_close(
        sequence_advantages("opo", inputs), torch.tensor([1 / 3, -2 / 3], dtype=torch.float64)
    )


def test_opo_vectorized_matches_loop() -> None:
    for seed in range(5):
        inputs = random_inputs(seed)
        scores, lengths = scores_of(inputs), inputs.mask_B_T.sum(-1).tolist()
        expected = [0.0] * len(scores)
        for rows in members(inputs).values():
            baseline = sum(lengths[i] * scores[i] for i in rows) / sum(lengths[i] for i in rows)
            for i in rows:
                expected[i] = scores[i] - baseline
        torch.testing.assert_close(
            sequence_advantages("opo", inputs), torch.tensor(expected, dtype=torch.float64)
        )


def test_opo_with_equal_lengths_is_dr_grpo() -> None:
    inputs = random_inputs(0, equal_lengths=True)
    dr_grpo = sequence_advantages("grpo", inputs, GRPOParams(scale="none"))
    torch.testing.assert_close(sequence_advantages("opo", inputs), dr_grpo)


def test_opo_advantages_have_zero_length_weighted_sum_per_group() -> None:
    for seed in range(3):
        inputs = random_inputs(seed)
        advantages, lengths = sequence_advantages("opo", inputs).tolist(), inputs.mask_B_T.sum(-1).tolist()
        for rows in members(inputs).values():
            assert sum(lengths[i] * advantages[i] for i in rows) == pytest.approx(0.0, abs=1e-9)


# -- gpg ---------------------------------------------------------------------------------------------------


GPG_SCORES = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0]
GPG_GROUPS = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("params", "alpha"),
    [
        # B = 10; six scores are non-zero; only group 0 (4 responses) has differing rewards.
        (GPGParams(alpha="nonzero_scores"), 10 / 6),
        (GPGParams(alpha="varied_groups"), 10 / 4),
        (GPGParams(alpha="none"), 1.0),
        (GPGParams(alpha="varied_groups", f_norm=2.0), 10 / 4),
    ],
)
def test_gpg_matches_hand_computed_advantages(params: GPGParams, alpha: float) -> None:
    inputs = scored_inputs(GPG_SCORES, GPG_GROUPS)
    # group means 0.5, 1, 0, 2: only group 0 is off its mean, by +-0.5.
    centered = torch.tensor([0.5, -0.5, -0.5, 0.5] + [0.0] * 6, dtype=torch.float64)
    torch.testing.assert_close(sequence_advantages("gpg", inputs, params), centered * alpha / params.f_norm)
    metrics = ADVANTAGE_ESTIMATORS.get("gpg").fn(inputs, params).metrics
    assert metrics["reward/gpg_alpha"] == pytest.approx(alpha)


def test_gpg_on_all_zero_scores_is_zero() -> None:
    inputs = scored_inputs([0.0] * 4, [0, 0, 1, 1])
    torch.testing.assert_close(sequence_advantages("gpg", inputs), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("alpha", ["nonzero_scores", "varied_groups", "none"])
def test_gpg_vectorized_matches_loop(alpha: str) -> None:
    for seed in range(5):
        inputs = random_inputs(seed)
        scores, groups = scores_of(inputs), members(inputs)
        if alpha == "nonzero_scores":
            counted = sum(1 for s in scores if s != 0)
        elif alpha == "varied_groups":
            counted = sum(len(rows) for rows in groups.values() if len({scores[i] for i in rows}) > 1)
        else:
            counted = len(scores)
        factor = len(scores) / max(counted, 1) / 1.5
        expected = [0.0] * len(scores)
        for rows in groups.values():
            mean = sum(scores[i] for i in rows) / len(rows)
            for i in rows:
                expected[i] = factor * (scores[i] - mean)
        advantages = sequence_advantages("gpg", inputs, GPGParams(alpha=alpha, f_norm=1.5))
        torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))


def test_gpg_advantages_are_zero_mean_per_group() -> None:
    for seed in range(3):
        inputs = random_inputs(seed)
        advantages = sequence_advantages("gpg", inputs).tolist()
        for rows in members(inputs).values():
            assert sum(advantages[i] for i in rows) == pytest.approx(0.0, abs=1e-9)


# -- resolution --------------------------------------------------------------------------------------------


def test_new_estimators_resolve_with_params_and_reject_bad_ones() -> None:
    spec = resolve_method(
        MethodChoice(preset="grpo", reward_side={"estimator": {"name": "gpg", "f_norm": 2.0}})
    )
    assert spec.reward_side.estimator.params == GPGParams(f_norm=2.0)
    spec = resolve_method(MethodChoice(preset="grpo", reward_side={"estimator": "pass_at_k"}))
    assert spec.reward_side.estimator.params == PassAtKParams()
    with pytest.raises(InvalidArgument, match="f_norm must be > 0"):
        resolve_method(MethodChoice(preset="grpo", reward_side={"estimator": {"name": "gpg", "f_norm": 0}}))
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        resolve_method(MethodChoice(preset="grpo", reward_side={"estimator": {"name": "opo", "eps": 1.0}}))
