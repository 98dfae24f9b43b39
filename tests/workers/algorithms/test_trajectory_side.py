"""Trajectory side: objectives, KL, aggregation (exact under any micro-batch split), mismatch correction."""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.workers.algorithms import PRESETS
from policyopt.workers.algorithms.registry import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    OBJECTIVES,
)
from policyopt.workers.algorithms.spec import Choice, TrajectorySide
from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals, TokenSumNormParams
from policyopt.workers.algorithms.trajectory_side.kl import KLLossParams
from policyopt.workers.algorithms.trajectory_side.loss import TokenLossInputs, compute_token_loss
from policyopt.workers.algorithms.trajectory_side.mismatch import MaskingParams, TruncationParams
from policyopt.workers.algorithms.trajectory_side.objectives import CISPOParams, GSPOParams, PPOClipParams


def objective(
    name: str, logp: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, params: object = None
):
    entry = OBJECTIVES.get(name)
    return entry.fn(
        logp, old, advantages, torch.ones_like(logp), params if params is not None else entry.params_type()
    )


def test_ppo_clip_matches_hand_computed_cases() -> None:
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 2.0]])
    logp = torch.log(ratios).requires_grad_()
    loss, metrics = objective("ppo_clip", logp, torch.zeros(1, 4), advantages, PPOClipParams())
    # 1.5*A=+1 clipped to 1.2; 0.5*A=-1 clipped to 0.8; 0.5*A=+1 unclipped; ratio 1 -> -A
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.2, 0.8, -0.5, -2.0]]))
    assert metrics["trajectory/clip_fraction_high"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert metrics["trajectory/clip_fraction_low"].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.5, -2.0]]))  # d(-A r)/dlogp = -A r


def test_ppo_clip_higher_and_dual_clip() -> None:
    loss, _ = objective(
        "ppo_clip", torch.log(torch.tensor([[1.25, 5.0]])), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]),
        PPOClipParams(eps_low=0.2, eps_high=0.28, dual_clip=3.0),
    )  # fmt: skip
    torch.testing.assert_close(loss, torch.tensor([[-1.25, 3.0]]))  # 1.25 < 1.28 unclipped; 5 bounded at 3


def test_gspo_uses_the_geometric_mean_sequence_ratio() -> None:
    logp = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    advantages = torch.ones(1, 2)
    loss, _ = objective("gspo", logp, torch.zeros(1, 2), advantages, GSPOParams(eps_low=0.5, eps_high=10.0))
    torch.testing.assert_close(loss.detach(), torch.full((1, 2), -math.sqrt(2.0)))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.full((1, 2), -math.sqrt(2.0)))  # -A s_i per token
    clipped, _ = objective(
        "gspo", logp.detach(), torch.zeros(1, 2), advantages, GSPOParams(eps_low=0.2, eps_high=0.2)
    )
    torch.testing.assert_close(clipped, torch.full((1, 2), -1.2))


def test_cispo_clips_a_stop_gradient_weight() -> None:
    logp = torch.tensor([[math.log(10.0), math.log(2.0)]], requires_grad=True)
    loss, metrics = objective("cispo", logp, torch.zeros(1, 2), torch.ones(1, 2), CISPOParams(max_weight=5.0))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-5.0, -2.0]]))  # every token keeps a gradient
    assert metrics["trajectory/clip_fraction_high"].tolist() == [[1.0, 0.0]]


def test_vanilla_pg_is_minus_advantage_times_logp() -> None:
    loss, _ = objective(
        "vanilla_pg", torch.tensor([[-1.0, -2.0]]), torch.zeros(1, 2), torch.tensor([[2.0, -1.0]])
    )
    torch.testing.assert_close(loss, torch.tensor([[2.0, -2.0]]))


def test_kl_estimators_match_formulas() -> None:
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # d = ref - logp = -1
    expected = {"k1": 1.0, "k2": 0.5, "k3": math.exp(-1.0), "abs": 1.0}
    for name, value in expected.items():
        entry = KL_ESTIMATORS.get(name)
        assert float(entry.fn(logp, ref, entry.params_type())) == pytest.approx(value)


def test_aggregations_match_hand_computed_values() -> None:
    loss = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    totals = StepTotals(tokens=3, sequences=2, max_completion_length=4)
    expected = {
        "token_mean": 2.0,
        "seq_mean_token_mean": 2.25,
        "seq_mean_token_sum": 3.0,
        "seq_mean_token_sum_norm": 0.75,
    }
    for name, value in expected.items():
        entry = AGGREGATIONS.get(name)
        assert float(entry.fn(loss, mask, totals, entry.params_type())) == pytest.approx(value)
    fixed = AGGREGATIONS.get("seq_mean_token_sum_norm").fn(
        loss, mask, totals, TokenSumNormParams(normalizer=3)
    )
    assert float(fixed) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
)
def test_aggregation_is_exact_under_any_micro_batch_split(name: str) -> None:
    torch.manual_seed(3)
    loss, mask = torch.randn(9, 6), (torch.rand(9, 6) > 0.3).float()
    mask[:, 0] = 1.0
    totals = StepTotals(tokens=int(mask.sum()), sequences=9, max_completion_length=6)
    entry = AGGREGATIONS.get(name)
    whole = entry.fn(loss, mask, totals, entry.params_type())
    for split in ([9], [1] * 9, [2, 3, 4], [5, 4]):
        parts = torch.randperm(9).split(split)
        summed = sum(entry.fn(loss[rows], mask[rows], totals, entry.params_type()) for rows in parts)
        torch.testing.assert_close(summed, whole)


def mismatch(name: str, params: object = None) -> torch.Tensor:
    old = torch.zeros(1, 2)
    sampler = torch.tensor([[-math.log(3.0), math.log(2.0)]])  # rho = 3, 0.5
    entry = MISMATCH_CORRECTIONS.get(name)
    weights, _ = entry.fn(
        old, sampler, torch.ones(1, 2), params if params is not None else entry.params_type()
    )
    return weights


def test_mismatch_corrections_match_hand_computed_weights() -> None:
    torch.testing.assert_close(mismatch("none"), torch.ones(1, 2))
    torch.testing.assert_close(mismatch("token_tis", TruncationParams(cap=2.0)), torch.tensor([[2.0, 0.5]]))
    torch.testing.assert_close(
        mismatch("token_mask", MaskingParams(low=0.5, high=2.0)), torch.tensor([[0.0, 1.0]])
    )
    torch.testing.assert_close(
        mismatch("sequence_tis", TruncationParams(cap=2.0)), torch.tensor([[1.5, 1.5]])
    )
    torch.testing.assert_close(mismatch("sequence_mask", MaskingParams(low=0.5, high=2.0)), torch.ones(1, 2))
    torch.testing.assert_close(mismatch("sequence_mask", MaskingParams(low=0.5, high=1.1)), torch.zeros(1, 2))


def test_token_masked_is_keeps_rho_inside_the_bounds_and_drops_it_outside() -> None:
    # rho = 3, 0.5: kept as weights (not truncated) inside [low, high], 0 outside.
    torch.testing.assert_close(
        mismatch("token_masked_is", MaskingParams(low=0.0, high=5.0)), torch.tensor([[3.0, 0.5]])
    )
    torch.testing.assert_close(
        mismatch("token_masked_is", MaskingParams(low=0.0, high=2.0)), torch.tensor([[0.0, 0.5]])
    )
    torch.testing.assert_close(
        mismatch("token_masked_is", MaskingParams(low=0.6, high=5.0)), torch.tensor([[3.0, 0.0]])
    )


def test_decoupled_ppo_clips_against_the_proximal_policy_and_weights_by_the_behaviour_ratio() -> None:
    side = PRESETS["decoupled_ppo"].spec.trajectory_side
    # pi_theta/pi_prox = 1.5, 0.9, 1.1; pi_prox/pi_behav = 2, 6 (above the cap 5: dropped), 0.5.
    logp = torch.log(torch.tensor([[1.5, 0.9, 1.1]])).requires_grad_()
    inputs = TokenLossInputs(
        logp_B_T=logp,
        old_logp_B_T=torch.zeros(1, 3),
        advantages_B_T=torch.tensor([[1.0, 1.0, -2.0]]),
        mask_B_T=torch.ones(1, 3),
        sampler_logp_B_T=torch.log(torch.tensor([[0.5, 1 / 6, 2.0]])),
    )
    loss, metrics = compute_token_loss(side, inputs)
    # token 0: -A r clipped at 1.2 -> -1.2, times 2; token 1: dropped; token 2: -A r = 2.2, times 0.5.
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.4, 0.0, 1.1]]))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 1.1]]))  # -A r w where unclipped and kept
    assert metrics["trajectory/mismatch_masked_fraction"].tolist() == [[0.0, 1.0, 0.0]]
    torch.testing.assert_close(metrics["trajectory/mismatch_weight_mean"], torch.tensor([[2.0, 0.0, 0.5]]))


def test_token_loss_composes_objective_mismatch_kl_and_entropy() -> None:
    side = TrajectorySide(
        objective=Choice("vanilla_pg"),
        aggregation=Choice("token_mean"),
        kl=Choice("k1", KLLossParams(coef=0.5)),
        mismatch_correction=Choice("token_tis", TruncationParams(cap=2.0)),
        entropy_coef=0.1,
    )
    inputs = TokenLossInputs(
        logp_B_T=torch.tensor([[-1.0]]),
        old_logp_B_T=torch.tensor([[0.0]]),
        advantages_B_T=torch.tensor([[2.0]]),
        mask_B_T=torch.ones(1, 1),
        sampler_logp_B_T=torch.tensor([[-math.log(3.0)]]),
        ref_logp_B_T=torch.tensor([[-2.0]]),
        entropy_B_T=torch.tensor([[1.5]]),
    )
    loss, metrics = compute_token_loss(side, inputs)
    # w = min(3, 2) = 2; objective -A logp = 2; k1 = 1 -> 0.5; entropy -0.15
    assert float(loss) == pytest.approx(2 * 2 + 0.5 - 0.15)
    assert float(metrics["trajectory/kl_ref"]) == pytest.approx(1.0)
    assert float(metrics["trajectory/mismatch_weight_mean"]) == pytest.approx(2.0)
