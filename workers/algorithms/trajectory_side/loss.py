"""Compose the trajectory side: objective x mismatch weights + KL to reference - entropy bonus, aggregated."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from policyopt.workers.algorithms.registry import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    OBJECTIVES,
)
from policyopt.workers.algorithms.spec import TrajectorySide
from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals
from policyopt.workers.algorithms.trajectory_side.kl import K3Params, estimate_kl_k3

TokenMetrics = dict[str, Tensor]
_METRIC_K3 = K3Params()  # drift metrics use one fixed estimator so they compare across runs and methods


@dataclass
class TokenLossInputs:
    """Per-token tensors of one micro-batch (b x T).

    Args:
        logp_B_T: current log-probs, with grad.
        old_logp_B_T: the trainer's log-probs before this step's first update (no grad).
        advantages_B_T: from the reward side.
        mask_B_T: 1.0 on trained tokens.
        sampler_logp_B_T: log-probs the sampler reported.
        ref_logp_B_T: log-probs with the adapter disabled, when the spec needs them.
        entropy_B_T: policy entropy per token (with grad when the entropy bonus is on), or None.
    """

    logp_B_T: Tensor
    old_logp_B_T: Tensor
    advantages_B_T: Tensor
    mask_B_T: Tensor
    sampler_logp_B_T: Tensor
    ref_logp_B_T: Tensor | None = None
    entropy_B_T: Tensor | None = None


def compute_token_loss(side: TrajectorySide, inputs: TokenLossInputs) -> tuple[Tensor, TokenMetrics]:
    """l_t = w_t * objective_t + beta * KL_t(pi_theta || pi_ref) - entropy_coef * H_t.

    ``w_t`` is the sampler/trainer mismatch weight. Returns the per-token loss and per-token metrics.
    """
    objective = OBJECTIVES.get(side.objective.name)
    loss_B_T, metrics = objective.fn(
        inputs.logp_B_T, inputs.old_logp_B_T, inputs.advantages_B_T, inputs.mask_B_T, side.objective.params
    )
    correction = MISMATCH_CORRECTIONS.get(side.mismatch_correction.name)
    weights_B_T, correction_metrics = correction.fn(
        inputs.old_logp_B_T, inputs.sampler_logp_B_T, inputs.mask_B_T, side.mismatch_correction.params
    )
    loss_B_T = loss_B_T * weights_B_T
    metrics |= correction_metrics
    metrics["trajectory/kl_old"] = estimate_kl_k3(inputs.logp_B_T.detach(), inputs.old_logp_B_T, _METRIC_K3)
    metrics["trajectory/mismatch_kl"] = estimate_kl_k3(
        inputs.old_logp_B_T, inputs.sampler_logp_B_T, _METRIC_K3
    )
    metrics["trajectory/mismatch_abs_logprob_diff"] = (inputs.old_logp_B_T - inputs.sampler_logp_B_T).abs()
    metrics["trajectory/mismatch_weight_mean"] = weights_B_T
    if inputs.ref_logp_B_T is not None:
        kl_B_T = KL_ESTIMATORS.get(side.kl.name).fn(inputs.logp_B_T, inputs.ref_logp_B_T, side.kl.params)
        coef = getattr(side.kl.params, "coef", 0.0)
        if coef > 0:
            loss_B_T = loss_B_T + coef * kl_B_T
        metrics["trajectory/kl_ref"] = kl_B_T.detach()
    if inputs.entropy_B_T is not None:
        if side.entropy_coef > 0:
            loss_B_T = loss_B_T - side.entropy_coef * inputs.entropy_B_T
        metrics["trajectory/entropy"] = inputs.entropy_B_T.detach()
    return loss_B_T, metrics


def aggregate_loss(side: TrajectorySide, loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals) -> Tensor:
    """This micro-batch's share of the step's scalar loss (see ``aggregation.py``)."""
    aggregation = AGGREGATIONS.get(side.aggregation.name)
    result: Tensor = aggregation.fn(loss_B_T, mask_B_T, totals, side.aggregation.params)
    return result
