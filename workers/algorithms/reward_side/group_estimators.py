"""Group-relative outcome estimators beyond GRPO: pass@k, OPO and GPG.

Each scores a sequence by its undiscounted return s_i (the sum of its token rewards) and places one advantage
per sequence on every trained token. Groups are prompts; shapes: B sequences, T completion tokens, P groups.
The definitions follow verl's ``verl/trainer/ppo/core_algos.py`` (named per estimator) except where noted:
a group of one always gets advantage 0 here (no other member to compare with), where verl's OPO and GPG use a
baseline of 0 for it.
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
    broadcast_scores,
    group_counts,
    group_mean,
    group_std,
    sequence_scores,
)


def _group_max(values_B: Tensor, group_index_B: Tensor, num_groups: int) -> Tensor:
    """Largest value within each group, shape P (-inf for a group with no members)."""
    empty_P = torch.full((num_groups,), float("-inf"), dtype=values_B.dtype, device=values_B.device)
    return empty_P.scatter_reduce(0, group_index_B, values_B, reduce="amax")


@dataclass(frozen=True)
class PassAtKParams(Params):
    scale: Literal["group_std", "none"] = param(
        "group_std",
        "group_std divides the margin by the group's std, as verl does by default (norm_adv_by_std_in_grpo); "
        "none keeps the raw margin, so advantages stay in reward units.",
    )
    eps: float = param(1e-6, "Added to the std; raise it if near-uniform groups blow up advantages.")

    def validate(self) -> list[str]:
        return [] if self.eps > 0 else [f"eps must be > 0; got {self.eps}"]


@ADVANTAGE_ESTIMATORS.register(
    "pass_at_k",
    params=PassAtKParams,
    rationale="Only each group's best response learns, by its margin over the runner-up: optimizes "
    "pass@k rather than the mean reward (Tang et al. 2025; verl grpo_passk).",
)
def compute_pass_at_k_advantages(inputs: AdvantageInputs, params: PassAtKParams) -> AdvantageResult:
    """A_i = (s_max - s_second) / (std_group(s) + eps) for the group's best i, 0 for every other member.

    s_second is the runner-up score: with a tie for the best, s_second = s_max and the whole group gets 0, so
    which tied member verl's ``torch.topk`` would pick does not matter. A group of one has no runner-up and
    gets 0 (verl raises). verl ``compute_grpo_passk_outcome_advantage``; Tang et al. 2025, "Optimizing
    language models for inference time objectives using reinforcement learning", arXiv:2503.19595.
    """
    mask_B_T, groups_B, num_groups = inputs.mask_B_T, inputs.group_index_B, inputs.num_groups
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    best_P = _group_max(scores_B, groups_B, num_groups)
    is_best_B = scores_B == best_P[groups_B]
    best_count_P = torch.zeros_like(best_P).index_add_(0, groups_B, is_best_B.to(scores_B.dtype))
    others_B = torch.where(is_best_B, torch.full_like(scores_B, float("-inf")), scores_B)
    runner_up_P = torch.where(best_count_P > 1, best_P, _group_max(others_B, groups_B, num_groups))
    has_runner_up_P = group_counts(groups_B, num_groups).to(scores_B.device) > 1
    margin_P = torch.where(has_runner_up_P, best_P - runner_up_P, torch.zeros_like(best_P))
    metrics: Metrics = {"reward/pass_at_k_margin_mean": float(margin_P.mean()) if num_groups else 0.0}
    if params.scale == "group_std":
        std_P = group_std(scores_B, groups_B, num_groups)
        margin_P = margin_P / (std_P + params.eps)
        informative_P = std_P > 0
        if informative_P.any():
            metrics["reward/std_amplification_max"] = float((1.0 / (std_P[informative_P] + params.eps)).max())
    advantages_B = torch.where(is_best_B, margin_P[groups_B], torch.zeros_like(scores_B))
    advantages_B_T = broadcast_scores(advantages_B, mask_B_T)
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))


@ADVANTAGE_ESTIMATORS.register(
    "opo",
    rationale="Length-weighted group mean as the baseline: the variance-minimizing baseline under strict "
    "on-policy training (OPO, Hao et al. 2025).",
)
def compute_opo_advantages(inputs: AdvantageInputs, params: Params) -> AdvantageResult:
    """A_i = s_i - b, b = sum_j |y_j| s_j / sum_j |y_j| over the group; |y_j| counts trained tokens.

    The gradient norm of a sequence grows with its length, so the optimal baseline
    E[|grad log p|^2 s] / E[|grad log p|^2] weights longer responses more. A group of one gets 0.
    verl ``compute_opo_outcome_advantage``; Hao et al. 2025, "On-policy RL with optimal reward baseline",
    arXiv:2505.23585.
    """
    mask_B_T, groups_B, num_groups = inputs.mask_B_T, inputs.group_index_B, inputs.num_groups
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    lengths_B = mask_B_T.sum(dim=-1).to(scores_B.dtype)
    weighted_P = torch.zeros(num_groups, dtype=scores_B.dtype, device=scores_B.device)
    weighted_P.index_add_(0, groups_B, lengths_B * scores_B)
    total_length_P = torch.zeros_like(weighted_P).index_add_(0, groups_B, lengths_B)
    baseline_P = weighted_P / total_length_P.clamp(min=1.0)
    advantages_B_T = broadcast_scores(scores_B - baseline_P[groups_B], mask_B_T)
    metrics: Metrics = {"reward/opo_baseline_mean": float(baseline_P.mean()) if num_groups else 0.0}
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))


@dataclass(frozen=True)
class GPGParams(Params):
    alpha: Literal["nonzero_scores", "varied_groups", "none"] = param(
        "nonzero_scores",
        "How alpha = B / B_counted undoes the dilution by samples without gradient. nonzero_scores: "
        "B_counted is the responses with a non-zero score (verl). varied_groups: the responses in groups "
        "whose rewards differ (the GPG paper's code; 1 under the zero_variance filter). none: alpha = 1.",
    )
    f_norm: float = param(
        1.0,
        "Constant F_norm dividing the centred score (verl's f_norm). 1 is the paper's plain policy gradient; "
        "raise it to shrink advantages of large-scale rewards (std scaling is grpo's).",
    )

    def validate(self) -> list[str]:
        return [] if self.f_norm > 0 else [f"f_norm must be > 0; got {self.f_norm}"]


def _gpg_alpha(scores_B: Tensor, groups_B: Tensor, num_groups: int, params: GPGParams) -> float:
    """alpha = B / max(B_counted, 1), B the sequences in the batch."""
    if params.alpha == "nonzero_scores":
        counted = int(torch.count_nonzero(scores_B))
    elif params.alpha == "varied_groups":
        counted = int((group_std(scores_B, groups_B, num_groups)[groups_B] > 0).sum())
    else:
        return 1.0
    return scores_B.numel() / max(counted, 1)


@ADVANTAGE_ESTIMATORS.register(
    "gpg",
    params=GPGParams,
    rationale="Group-mean baseline without std scaling, rescaled by alpha so batches with many "
    "zero-gradient samples still take full-size steps (GPG, Chu et al. 2025).",
)
def compute_gpg_advantages(inputs: AdvantageInputs, params: GPGParams) -> AdvantageResult:
    """A_i = alpha (s_i - mean_group(s)) / F_norm, alpha = B / B_counted over the whole batch (see params).

    verl ``compute_gpg_outcome_advantage`` (alpha = B / count_nonzero(s), F_norm = f_norm); Chu et al. 2025,
    "GPG: a simple and strong reinforcement learning baseline for model reasoning", arXiv:2504.02546, whose
    code counts the responses of groups with differing rewards instead. Pair it with ``vanilla_pg``
    (verl's ``gpg`` policy loss is -A log p). A group of one gets 0.
    """
    mask_B_T, groups_B, num_groups = inputs.mask_B_T, inputs.group_index_B, inputs.num_groups
    scores_B = sequence_scores(inputs.token_rewards_B_T, mask_B_T)
    alpha = _gpg_alpha(scores_B, groups_B, num_groups, params)
    centered_B = scores_B - group_mean(scores_B, groups_B, num_groups)[groups_B]
    advantages_B_T = broadcast_scores(alpha * centered_B / params.f_norm, mask_B_T)
    metrics: Metrics = {"reward/gpg_alpha": alpha}
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))
