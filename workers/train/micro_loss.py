"""The loss of one micro-batch of a prepared step: the method's token loss, plus the critic's value loss.

``PolicyUpdater`` (update.py) prepares a step once (``PreparedStep``: advantages, old/reference
log-probs, critic values, all B x T on the device) and, for each optimizer step, calls
``micro_batch_loss`` per length-sorted micro-batch and back-propagates it. Both losses are normalized by
the whole optimizer step's token/sequence counts (``StepTotals``), so gradients accumulate exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from policyopt.workers.algorithms.diagnostics import TokenMetricAccumulator
from policyopt.workers.algorithms.reward_side.gae import compute_value_loss
from policyopt.workers.algorithms.spec import MethodSpec
from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals
from policyopt.workers.algorithms.trajectory_side.loss import (
    TokenLossInputs,
    aggregate_loss,
    compute_token_loss,
)
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import MicroBatch, StepBatch

Metrics = dict[str, float]


@dataclass
class PreparedStep:
    """A step's batch with everything computed before the first update (all B x T, on the device)."""

    batch: StepBatch
    mask_B_T: Tensor
    sampler_logp_B_T: Tensor
    advantages_B_T: Tensor
    lengths: list[int]
    returns_B_T: Tensor | None = None
    old_logp_B_T: Tensor | None = None
    ref_logp_B_T: Tensor | None = None
    old_values_B_T: Tensor | None = None
    teacher_logp_B_T: Tensor | None = None
    metrics: Metrics = field(default_factory=dict)


def micro_batch_loss(
    spec: MethodSpec,
    forward: PolicyForward,
    critic: nn.Module | None,
    prepared: PreparedStep,
    micro: MicroBatch,
    totals: StepTotals,
    accumulator: TokenMetricAccumulator,
) -> Tensor:
    """The micro-batch's token loss (and value loss, with a critic); its token metrics go to ``accumulator``."""
    side = spec.trajectory_side
    outputs = forward.score(
        micro, entropy="grad" if side.entropy_coef > 0 else "value", keep_hidden=critic is not None
    )
    rows, width = micro.rows, micro.width
    mask_b_T = prepared.mask_B_T[rows, :width]

    def select(grid_B_T: Tensor | None) -> Tensor | None:
        return grid_B_T[rows, :width] if grid_B_T is not None else None

    old_logp_b_T = select(prepared.old_logp_B_T)
    inputs = TokenLossInputs(
        logp_B_T=outputs.logp_b_T,
        old_logp_B_T=old_logp_b_T if old_logp_b_T is not None else outputs.logp_b_T.detach(),
        advantages_B_T=prepared.advantages_B_T[rows, :width],
        mask_B_T=mask_b_T,
        sampler_logp_B_T=prepared.sampler_logp_B_T[rows, :width],
        ref_logp_B_T=select(prepared.ref_logp_B_T),
        entropy_B_T=outputs.entropy_b_T,
    )
    loss_b_T, token_metrics = compute_token_loss(side, inputs)
    loss = aggregate_loss(side, loss_b_T, mask_b_T, totals)
    if critic is not None and outputs.hidden_N_H is not None:
        loss = loss + value_loss(
            spec, forward, critic, prepared, micro, outputs.hidden_N_H, totals, token_metrics
        )
    accumulator.add(token_metrics, mask_b_T)
    return loss


def value_loss(
    spec: MethodSpec,
    forward: PolicyForward,
    critic: nn.Module,
    prepared: PreparedStep,
    micro: MicroBatch,
    hidden_N_H: Tensor,
    totals: StepTotals,
    metrics: dict[str, Tensor],
) -> Tensor:
    """Token-mean clipped value loss of this micro-batch (normalized by the whole step's tokens)."""
    assert prepared.returns_B_T is not None and prepared.old_values_B_T is not None
    rows, width = micro.rows, micro.width
    values_b_T = forward.scatter(critic(hidden_N_H), micro)
    value_clip = float(getattr(spec.reward_side.critic.params, "value_clip", 0.0))
    loss_b_T, value_metrics = compute_value_loss(
        values_b_T, prepared.old_values_B_T[rows, :width], prepared.returns_B_T[rows, :width], value_clip
    )
    metrics |= value_metrics
    metrics["trajectory/value_loss"] = loss_b_T.detach()
    mask_b_T = prepared.mask_B_T[rows, :width]
    return (loss_b_T * mask_b_T).sum() / max(totals.tokens, 1)


__all__ = ["Metrics", "PreparedStep", "micro_batch_loss", "value_loss"]
