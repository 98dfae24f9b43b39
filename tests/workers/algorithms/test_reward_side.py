"""Reward side: hand-computed advantages, loop-vs-vectorized checks and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS, GROUP_FILTERS, REWARD_SHAPING
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs, masked_whiten, returns_to_go
from policyopt.workers.algorithms.reward_side.estimators import GRPOParams, ReinforceParams
from policyopt.workers.algorithms.reward_side.filtering import ZeroVarianceFilterParams
from policyopt.workers.algorithms.reward_side.gae import GAEParams, compute_gae, compute_value_loss
from policyopt.workers.algorithms.reward_side.shaping import (
    KLPenaltyParams,
    LengthPenaltyParams,
    OverlongPenaltyParams,
    ShapingContext,
)


def scored_inputs(scores: list[float], groups: list[int], width: int = 1) -> AdvantageInputs:
    """Each sequence's score on its last of ``width`` tokens."""
    rewards_B_T = torch.zeros(len(scores), width)
    rewards_B_T[:, -1] = torch.tensor(scores)
    return AdvantageInputs(rewards_B_T, torch.ones(len(scores), width), torch.tensor(groups))


def estimate(name: str, inputs: AdvantageInputs, params: object = None) -> torch.Tensor:
    entry = ADVANTAGE_ESTIMATORS.get(name)
    return entry.fn(inputs, params if params is not None else entry.params_type()).advantages_B_T


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (
            "group_std",
            [
                0.5 / math.sqrt(1 / 3),
                -0.5 / math.sqrt(1 / 3),
                -0.5 / math.sqrt(1 / 3),
                0.5 / math.sqrt(1 / 3),
                0,
                0,
            ],
        ),
        (
            "batch_std",
            [0.5 / math.sqrt(0.8), -0.5 / math.sqrt(0.8), -0.5 / math.sqrt(0.8), 0.5 / math.sqrt(0.8), 0, 0],
        ),
        ("none", [0.5, -0.5, -0.5, 0.5, 0, 0]),
    ],
)
def test_grpo_matches_hand_computed_advantages(scale: str, expected: list[float]) -> None:
    # group 0 scores 1,0,0,1: mean 0.5, sample std sqrt(1/3); group 1 scores 2,2: zero. Batch std sqrt(0.8).
    inputs = scored_inputs([1, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1], width=2)
    advantages = estimate("grpo", inputs, GRPOParams(scale=scale, eps=1e-12))
    torch.testing.assert_close(advantages[:, 0], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(advantages[:, 0], advantages[:, 1])


def test_grpo_advantages_are_zero_mean_per_group() -> None:
    torch.manual_seed(0)
    groups = torch.randint(0, 5, (40,))
    inputs = AdvantageInputs(torch.randn(40, 3), torch.ones(40, 3), groups)
    for scale in ("group_std", "batch_std", "none"):
        advantages_B = estimate("grpo", inputs, GRPOParams(scale=scale))[:, 0]
        for g in range(5):
            assert abs(float(advantages_B[groups == g].mean())) < 1e-5


def test_rloo_matches_hand_computed_and_excludes_self() -> None:
    inputs = scored_inputs([1, 0, 0, 1, 2, 2, 5], [0, 0, 0, 0, 1, 1, 2])
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0])
    torch.testing.assert_close(estimate("rloo", inputs)[:, 0], expected)


def test_rloo_vectorized_matches_loop() -> None:
    torch.manual_seed(1)
    scores, groups = torch.randn(30), torch.randint(0, 6, (30,))
    inputs = AdvantageInputs(scores.unsqueeze(1), torch.ones(30, 1), groups)
    loop = []
    for i in range(30):
        others = [float(scores[j]) for j in range(30) if j != i and groups[j] == groups[i]]
        loop.append(float(scores[i]) - sum(others) / len(others) if others else 0.0)
    torch.testing.assert_close(estimate("rloo", inputs)[:, 0], torch.tensor(loop))


def test_returns_to_go_discount_and_skip_environment_tokens() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    expected = torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0], [0.5, 0.0, 1.0]])
    torch.testing.assert_close(returns_to_go(rewards, mask, 0.5), expected)


def test_reinforce_moving_average_baseline_uses_previous_estimate() -> None:
    params = ReinforceParams(baseline="moving_average", baseline_decay=0.9)
    inputs = scored_inputs([1.0, 3.0], [0, 1])
    first = estimate("reinforce", inputs, params)
    torch.testing.assert_close(first[:, 0], torch.tensor([-1.0, 1.0]))  # first baseline: batch mean 2
    second_inputs = scored_inputs([4.0, 4.0], [0, 1])
    second_inputs.state = inputs.state
    second = estimate("reinforce", second_inputs, params)
    torch.testing.assert_close(second[:, 0], torch.tensor([2.0, 2.0]))  # baseline still 2
    assert inputs.state["reinforce_baseline"] == pytest.approx(0.9 * 2 + 0.1 * 4)


def test_reinforce_pp_whitens_returns_over_the_batch() -> None:
    inputs = scored_inputs([1.0, 3.0], [0, 1], width=2)
    root = math.sqrt(4 / 3)  # values 1,1,3,3: mean 2, sample std sqrt(4/3)
    torch.testing.assert_close(
        estimate("reinforce_pp", inputs), torch.tensor([[-1 / root] * 2, [1 / root] * 2])
    )


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens() -> None:
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    rewards = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    inputs = AdvantageInputs(rewards, mask, torch.tensor([0, 0, 1]))
    # centered: -1 (1 token), +1 (2 tokens), 0 (1 token); token mean 0.25, sample var 2.75/3
    std = math.sqrt(2.75 / 3)
    expected = torch.tensor([[-1.25 / std, 0.0], [0.75 / std, 0.75 / std], [-0.25 / std, 0.0]])
    torch.testing.assert_close(estimate("reinforce_pp_baseline", inputs), expected)


def test_remax_subtracts_the_greedy_reward() -> None:
    inputs = scored_inputs([1.0, 0.0], [0, 1], width=2)
    inputs.baseline_scores_B = torch.tensor([0.5, 0.5])
    torch.testing.assert_close(estimate("remax", inputs), torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    inputs.baseline_scores_B = None
    with pytest.raises(ValueError, match="baseline_reward"):
        estimate("remax", inputs)


def test_gae_matches_hand_computed_two_step_case() -> None:
    # t=1: delta = 1 - 0.8 = 0.2; t=0: delta = 0.8 - 0.5 = 0.3, A0 = 0.3 + 0.5 * 0.2 = 0.4
    advantages, returns = compute_gae(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.8]]), torch.ones(1, 2), gamma=1.0, lam=0.5
    )
    torch.testing.assert_close(advantages, torch.tensor([[0.4, 0.2]]))
    torch.testing.assert_close(returns, torch.tensor([[0.9, 1.0]]))


def test_gae_skips_environment_tokens() -> None:
    advantages, _ = compute_gae(
        torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([[0.5, 9.0, 0.8]]),
        torch.tensor([[1.0, 0.0, 1.0]]),
        1.0,
        0.5,
    )
    torch.testing.assert_close(advantages, torch.tensor([[0.4, 0.0, 0.2]]))


def test_gae_vectorized_matches_python_loop() -> None:
    torch.manual_seed(2)
    rewards, values = torch.randn(5, 7), torch.randn(5, 7)
    mask = (torch.rand(5, 7) > 0.3).float()
    gamma, lam = 0.9, 0.8
    advantages, _ = compute_gae(rewards, values, mask, gamma, lam)
    for b in range(5):
        trained = [t for t in range(7) if mask[b, t] > 0]
        running, next_value = 0.0, 0.0
        for t in reversed(trained):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            next_value = float(values[b, t])
            assert float(advantages[b, t]) == pytest.approx(running, abs=1e-5)


def test_gae_estimator_requires_values_and_returns_them() -> None:
    inputs = scored_inputs([1.0], [0], width=2)
    with pytest.raises(ValueError, match="value_head"):
        estimate("gae", inputs, GAEParams())
    inputs.values_B_T = torch.tensor([[0.5, 0.8]])
    result = ADVANTAGE_ESTIMATORS.get("gae").fn(inputs, GAEParams(lam=0.5, whiten=False))
    torch.testing.assert_close(result.returns_B_T, torch.tensor([[0.9, 1.0]]))


def test_value_loss_clips_around_old_values() -> None:
    values, old, returns = torch.tensor([[1.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    loss, metrics = compute_value_loss(values, old, returns, value_clip=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24; token 1: within the clip
    torch.testing.assert_close(loss, torch.tensor([[1.62, 0.405]]))
    torch.testing.assert_close(metrics["trajectory/value_clip_fraction"], torch.tensor([[1.0, 0.0]]))


def test_masked_whiten_ignores_masked_entries() -> None:
    values = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    whitened = masked_whiten(values, mask)
    assert float(whitened[0, 1]) == 0.0
    assert float(whitened[mask > 0].mean()) == pytest.approx(0.0, abs=1e-6)


def shaping_context(lengths: list[int], width: int) -> ShapingContext:
    mask = torch.ones(len(lengths), width)
    last = torch.zeros(len(lengths), width)
    last[:, -1] = 1.0
    return ShapingContext(mask, last, torch.tensor(lengths), max_completion_length=10)


def test_overlong_penalty_follows_dapo_formula() -> None:
    context = shaping_context([5, 6, 8, 10, 12], 1)
    params = OverlongPenaltyParams(max_length=0, buffer_length=4)  # L_max from the run: 10
    shaped, _ = REWARD_SHAPING.get("overlong_penalty").fn(torch.zeros(5, 1), context, params)
    torch.testing.assert_close(shaped[:, 0], torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def test_length_penalty_charges_per_token() -> None:
    shaped, _ = REWARD_SHAPING.get("length_penalty").fn(
        torch.zeros(2, 2), shaping_context([2, 3], 2), LengthPenaltyParams(coef=0.1)
    )
    torch.testing.assert_close(shaped, torch.tensor([[0.0, -0.2], [0.0, -0.3]]))


def test_kl_penalty_folds_kl_into_token_rewards() -> None:
    context = shaping_context([2], 2)
    context.logp_B_T, context.ref_logp_B_T = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    shaped, _ = REWARD_SHAPING.get("kl_penalty").fn(torch.zeros(1, 2), context, KLPenaltyParams(coef=0.5))
    torch.testing.assert_close(shaped, torch.tensor([[-0.25, 0.5]]))  # k1 = [0.5, -1]


def test_zero_variance_filter_keeps_groups_with_signal() -> None:
    scores, groups = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5]), torch.tensor([0, 0, 1, 1, 2])
    keep = GROUP_FILTERS.get("zero_variance").fn(scores, groups, 3, ZeroVarianceFilterParams())
    assert keep.tolist() == [False, True, False]
    assert GROUP_FILTERS.get("none").fn(scores, groups, 3, None).tolist() == [True, True, True]
