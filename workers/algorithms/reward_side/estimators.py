"""Critic-free advantage estimators: what multiplies grad log p, per token (B x T).

Each takes ``AdvantageInputs`` and its params and returns an ``AdvantageResult``. GAE lives in ``gae.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from policyopt.workers.algorithms.params import Params, param
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import (
    AdvantageInputs,
    AdvantageResult,
    advantage_metrics,
    broadcast_scores,
    group_counts,
    group_mean,
    group_std,
    masked_whiten,
    returns_to_go,
    sequence_scores,
)


def _gamma_problems(gamma: float) -> list[str]:
    return [] if 0.0 <= gamma <= 1.0 else [f"gamma must be in [0, 1]; got {gamma}"]


@dataclass(frozen=True)
class ReinforceParams(Params):
    gamma: float = param(
        1.0, "Discount per trained token; below 1 favours early reward (rarely useful for LLMs)."
    )
    baseline: Literal["none", "moving_average"] = param(
        "none", "moving_average subtracts a running mean score: lower variance, still unbiased."
    )
    baseline_decay: float = param(
        0.9, "Weight of the old running mean; higher is smoother but slower to track."
    )

    def validate(self) -> list[str]:
        decay_ok = 0.0 <= self.baseline_decay < 1.0
        return _gamma_problems(self.gamma) + ([] if decay_ok else ["baseline_decay must be in [0, 1)"])


@ADVANTAGE_ESTIMATORS.register(
    "reinforce",
    params=ReinforceParams,
    rationale="Raw return G_t (Williams 1992); simplest, highest variance.",
)
def compute_reinforce_advantages(inputs: AdvantageInputs, params: ReinforceParams) -> AdvantageResult:
    """A_t = G_t - b, G_t the return-to-go, b a running mean of scores (or 0). Williams, 1992.

    The running mean is updated after use, so b never depends on the current batch (unbiased); on the
    first step it starts at the batch mean.
    """
    mask_B_T = inputs.mask_B_T
    returns_B_T = returns_to_go(inputs.token_rewards_B_T, mask_B_T, params.gamma)
    advantages_B_T = returns_B_T
    metrics: dict[str, float] = {}
    if params.baseline == "moving_average":
        batch_mean = float(sequence_scores(inputs.token_rewards_B_T, mask_B_T).mean())
        baseline = inputs.state.get("reinforce_baseline", batch_mean)
        advantages_B_T = (returns_B_T - baseline) * mask_B_T
        inputs.state["reinforce_baseline"] = (
            params.baseline_decay * baseline + (1 - params.baseline_decay) * batch_mean
        )
        metrics["reward/baseline"] = baseline
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))


@dataclass(frozen=True)
class GRPOParams(Params):
    scale: Literal["group_std", "batch_std", "none"] = param(
        "group_std",
        "group_std: GRPO (Shao et al. 2024). batch_std: less noise amplification on near-uniform groups. "
        "none: Dr.GRPO (Liu et al. 2025), removes the difficulty bias of per-group std.",
    )
    eps: float = param(1e-6, "Added to the std; raise it if near-uniform groups blow up advantages.")

    def validate(self) -> list[str]:
        return [] if self.eps > 0 else [f"eps must be > 0; got {self.eps}"]


@ADVANTAGE_ESTIMATORS.register(
    "grpo",
    params=GRPOParams,
    rationale="Group-relative baseline, no critic (DeepSeekMath, Shao et al. 2024).",
)
def compute_grpo_advantages(inputs: AdvantageInputs, params: GRPOParams) -> AdvantageResult:
    """A_i = (s_i - mean_group(s)) / (std + eps), broadcast over tokens. Shao et al. 2024, arXiv:2402.03300.

    ``scale`` picks the divisor: the group std (GRPO), the batch std, or 1 (Dr.GRPO, arXiv:2503.20783).
    """
    mask_B_T, groups_B = inputs.mask_B_T, inputs.group_index_B
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    centered_B = scores_B - group_mean(scores_B, groups_B, inputs.num_groups)[groups_B]
    metrics: dict[str, float] = {}
    if params.scale == "group_std":
        std_P = group_std(scores_B, groups_B, inputs.num_groups)
        centered_B = centered_B / (std_P[groups_B] + params.eps)
        informative_P = std_P > 0
        if informative_P.any():
            metrics["reward/std_amplification_max"] = float((1.0 / (std_P[informative_P] + params.eps)).max())
    elif params.scale == "batch_std" and scores_B.numel() > 1:
        centered_B = centered_B / (scores_B.std() + params.eps)
    advantages_B_T = broadcast_scores(centered_B, mask_B_T)
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))


@ADVANTAGE_ESTIMATORS.register(
    "rloo", rationale="Leave-one-out group baseline: unbiased, no std scaling (Ahmadian et al. 2024)."
)
def compute_rloo_advantages(inputs: AdvantageInputs, params: Params) -> AdvantageResult:
    """A_i = s_i - mean_{j != i} s_j over the group. Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740.

    A group of one has no other member, so its advantage is 0.
    """
    mask_B_T, groups_B = inputs.mask_B_T, inputs.group_index_B
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    counts_B = group_counts(groups_B, inputs.num_groups)[groups_B]
    sums_B = torch.zeros(inputs.num_groups, dtype=scores_B.dtype).index_add_(0, groups_B, scores_B)[groups_B]
    others_mean_B = (sums_B - scores_B) / (counts_B - 1.0).clamp(min=1.0)
    advantages_B = torch.where(counts_B > 1, scores_B - others_mean_B, torch.zeros_like(scores_B))
    advantages_B_T = broadcast_scores(advantages_B, mask_B_T)
    return AdvantageResult(advantages_B_T, None, advantage_metrics(advantages_B_T, mask_B_T))


@dataclass(frozen=True)
class ReinforcePlusPlusParams(Params):
    gamma: float = param(1.0, "Discount per trained token of the token-level return.")

    def validate(self) -> list[str]:
        return _gamma_problems(self.gamma)


@ADVANTAGE_ESTIMATORS.register(
    "reinforce_pp",
    params=ReinforcePlusPlusParams,
    rationale="Token returns (KL folded in) whitened over the batch: stable without a critic (Hu 2025).",
)
def compute_reinforce_pp_advantages(
    inputs: AdvantageInputs, params: ReinforcePlusPlusParams
) -> AdvantageResult:
    """A_t = whiten_batch(G_t), G_t the token return-to-go. REINFORCE++, Hu 2025, arXiv:2501.03262."""
    mask_B_T = inputs.mask_B_T
    returns_B_T = returns_to_go(inputs.token_rewards_B_T, mask_B_T, params.gamma)
    advantages_B_T = masked_whiten(returns_B_T, mask_B_T)
    return AdvantageResult(advantages_B_T, None, advantage_metrics(advantages_B_T, mask_B_T))


@ADVANTAGE_ESTIMATORS.register(
    "reinforce_pp_baseline",
    rationale="Group-mean baseline, then batch whitening: GRPO's baseline without per-group std noise.",
)
def compute_reinforce_pp_baseline_advantages(inputs: AdvantageInputs, params: Params) -> AdvantageResult:
    """A_i = whiten_batch(s_i - mean_group(s)), broadcast over tokens. Hu 2025, arXiv:2501.03262."""
    mask_B_T, groups_B = inputs.mask_B_T, inputs.group_index_B
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    centered_B = scores_B - group_mean(scores_B, groups_B, inputs.num_groups)[groups_B]
    advantages_B_T = masked_whiten(broadcast_scores(centered_B, mask_B_T), mask_B_T)
    return AdvantageResult(advantages_B_T, None, advantage_metrics(advantages_B_T, mask_B_T))


@ADVANTAGE_ESTIMATORS.register(
    "remax",
    needs=("greedy_baseline",),
    rationale="Greedy rollout's reward as the baseline: low variance for one sample per prompt (Li et al. 2023).",
)
def compute_remax_advantages(inputs: AdvantageInputs, params: Params) -> AdvantageResult:
    """A_t = G_t - r(greedy completion of the same prompt). ReMax, Li et al. 2023, arXiv:2310.10505."""
    if inputs.baseline_scores_B is None:
        raise ValueError(
            "remax needs TrajectoryGroup.baseline_reward (a greedy rollout's reward) on every group"
        )
    mask_B_T = inputs.mask_B_T
    returns_B_T = returns_to_go(inputs.token_rewards_B_T, mask_B_T, 1.0)
    advantages_B_T = (returns_B_T - inputs.baseline_scores_B.unsqueeze(-1)) * mask_B_T
    return AdvantageResult(advantages_B_T, None, advantage_metrics(advantages_B_T, mask_B_T))
