"""Turn-level credit for agentic (multi-turn) trajectories: GRPO statistics over per-turn returns.

A model turn is a maximal run of trained tokens (``mask_B_T`` 1) between environment tokens (0); two model
turns with no environment tokens between them count as one. A turn's reward is the sum of the token rewards
inside it (the trainer places per-turn rewards at each turn's last token, the outcome at the last one).

Shapes: B sequences, T completion tokens, K turns (the most any sequence has), P groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import Params, param
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import (
    AdvantageInputs,
    AdvantageResult,
    Metrics,
    advantage_metrics,
    group_mean,
    group_std,
)


@dataclass(frozen=True)
class TurnCreditParams(Params):
    credit: Literal["outcome", "discounted"] = param(
        "outcome",
        "outcome: the trajectory's whole return, group-normalized, on every model turn (GRPO; robust when "
        "only the end is scored). discounted: each turn gets its own return-to-go sum_j gamma^(j-k) R_j, so "
        "a turn is not credited for rewards earned before it (use it with per-turn rewards).",
    )
    gamma: float = param(
        1.0, "Discount per turn (not per token) of the discounted credit; below 1 favours near rewards."
    )
    scale: Literal["group_std", "batch_std", "none"] = param(
        "group_std", "Divisor of the centred returns, as GRPO's: group std, batch std, or none (Dr.GRPO)."
    )
    eps: float = param(1e-6, "Added to the std; raise it if near-uniform groups blow up advantages.")

    def validate(self) -> list[str]:
        problems = [] if 0.0 <= self.gamma <= 1.0 else [f"gamma must be in [0, 1]; got {self.gamma}"]
        return problems + ([] if self.eps > 0 else [f"eps must be > 0; got {self.eps}"])


def turn_index(mask_B_T: Tensor) -> Tensor:
    """Index of the model turn each trained token belongs to (0, 1, ...), -1 on untrained tokens. B x T."""
    trained_B_T = mask_B_T > 0
    previous_B_T = torch.zeros_like(trained_B_T)
    previous_B_T[:, 1:] = trained_B_T[:, :-1]
    starts_B_T = trained_B_T & ~previous_B_T
    index_B_T = starts_B_T.long().cumsum(dim=1) - 1
    return torch.where(trained_B_T, index_B_T, torch.full_like(index_B_T, -1))


def turn_rewards(token_rewards_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """R_{b,k}: the sum of the token rewards inside turn k of sequence b. B x K (K >= 1)."""
    index_B_T = turn_index(mask_B_T)
    num_turns = max(int(index_B_T.max().item()) + 1, 1) if index_B_T.numel() else 1
    rewards_B_K = token_rewards_B_T.new_zeros(mask_B_T.shape[0], num_turns + 1)
    # Untrained tokens go to a spare last column, dropped below.
    slot_B_T = torch.where(index_B_T >= 0, index_B_T, torch.full_like(index_B_T, num_turns))
    rewards_B_K.scatter_add_(1, slot_B_T, token_rewards_B_T * mask_B_T)
    return rewards_B_K[:, :num_turns]


def discounted_turn_returns(rewards_B_K: Tensor, gamma: float) -> Tensor:
    """G_{b,k} = sum_{j >= k} gamma^(j-k) R_{b,j}, as one matmul with an upper-triangular discount. B x K."""
    K = rewards_B_K.shape[1]
    offsets_K_K = torch.arange(K).unsqueeze(1) - torch.arange(K).unsqueeze(0)  # j - k
    powers_K_K = torch.pow(
        torch.tensor(gamma, dtype=rewards_B_K.dtype), offsets_K_K.clamp(min=0).to(rewards_B_K.dtype)
    )
    discount_K_K = torch.where(offsets_K_K >= 0, powers_K_K, torch.zeros_like(powers_K_K))
    return rewards_B_K @ discount_K_K.to(rewards_B_K.device)


def _normalize(
    returns_B_K: Tensor, baseline_B: Tensor, inputs: AdvantageInputs, params: TurnCreditParams
) -> tuple[Tensor, Metrics]:
    """(G - mean_group(baseline)) / (scale + eps), the statistics taken over the baseline returns."""
    groups_B, num_groups = inputs.group_index_B, inputs.num_groups
    centered_B_K = returns_B_K - group_mean(baseline_B, groups_B, num_groups)[groups_B].unsqueeze(-1)
    metrics: Metrics = {}
    if params.scale == "group_std":
        std_P = group_std(baseline_B, groups_B, num_groups)
        centered_B_K = centered_B_K / (std_P[groups_B].unsqueeze(-1) + params.eps)
        if (std_P > 0).any():
            metrics["reward/std_amplification_max"] = float((1.0 / (std_P[std_P > 0] + params.eps)).max())
    elif params.scale == "batch_std" and baseline_B.numel() > 1:
        centered_B_K = centered_B_K / (baseline_B.std() + params.eps)
    return centered_B_K, metrics


@ADVANTAGE_ESTIMATORS.register(
    "turn_grpo",
    params=TurnCreditParams,
    rationale="GRPO over model turns (agentic RL): outcome broadcast to every turn, or per-turn "
    "discounted returns; environment tokens get no credit.",
)
def compute_turn_advantages(inputs: AdvantageInputs, params: TurnCreditParams) -> AdvantageResult:
    """A_{b,t} = (G_{b,k(t)} - mean_group(G_0)) / (std_group(G_0) + eps) on trained token t of turn k(t).

    ``outcome``: G_{b,k} = sum_j R_{b,j} for every k (exactly GRPO). ``discounted``: G_{b,k} is the turn's
    discounted return-to-go; the baseline and scale are those of the episode return G_{b,0}, so with
    gamma = 1 and only an outcome reward it reduces to GRPO too. Returns are per turn, not per token:
    environment tokens neither discount nor receive credit.
    """
    mask_B_T = inputs.mask_B_T
    rewards_B_K = turn_rewards(inputs.token_rewards_B_T, mask_B_T)
    if params.credit == "discounted":
        returns_B_K = discounted_turn_returns(rewards_B_K, params.gamma)
    else:
        returns_B_K = rewards_B_K.sum(dim=1, keepdim=True).expand_as(rewards_B_K)
    advantages_B_K, metrics = _normalize(returns_B_K, returns_B_K[:, 0], inputs, params)
    index_B_T = turn_index(mask_B_T)
    advantages_B_T = advantages_B_K.gather(1, index_B_T.clamp(min=0)) * mask_B_T
    metrics["reward/turns_mean"] = float((index_B_T.amax(dim=1) + 1).float().mean())
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))
