"""Tensor helpers shared by the reward-side choices: group statistics, masked moments, returns.

Shapes: B sequences (all groups flattened), T completion tokens, P groups (prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

Metrics = dict[str, float]


@dataclass
class AdvantageInputs:
    """What every advantage estimator may read.

    Args:
        token_rewards_B_T: reward per token (score at the last trained token, shaping added), 0 elsewhere.
        mask_B_T: 1.0 on trained tokens.
        group_index_B: which group (prompt) each sequence belongs to, in ``[0, P)``.
        values_B_T: critic values V(s_t) before token t, when a critic is configured.
        baseline_scores_B: ReMax greedy-rollout reward of each sequence's prompt.
        state: running statistics kept across steps (saved with the trainer state).
        logp_B_T: the trainer's log-probs before the update, when a choice needs them (distillation).
        teacher_logp_B_T: the teacher's log-probs of the same tokens, when a choice needs a teacher.
    """

    token_rewards_B_T: Tensor
    mask_B_T: Tensor
    group_index_B: Tensor
    values_B_T: Tensor | None = None
    baseline_scores_B: Tensor | None = None
    state: dict[str, float] = field(default_factory=dict)
    logp_B_T: Tensor | None = None
    teacher_logp_B_T: Tensor | None = None

    @property
    def num_groups(self) -> int:
        return int(self.group_index_B.max().item()) + 1 if self.group_index_B.numel() else 0


@dataclass
class AdvantageResult:
    """Advantages per token, returns for a critic (None without one), and metrics."""

    advantages_B_T: Tensor
    returns_B_T: Tensor | None = None
    metrics: Metrics = field(default_factory=dict)


def sequence_scores(token_rewards_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """Undiscounted return of each sequence: sum_t r_t over trained tokens."""
    return (token_rewards_B_T * mask_B_T).sum(dim=-1)


def group_mean(values_B: Tensor, group_index_B: Tensor, num_groups: int) -> Tensor:
    """Mean of ``values_B`` within each group, shape P."""
    sums_P = torch.zeros(num_groups, dtype=values_B.dtype, device=values_B.device)
    counts_P = torch.zeros_like(sums_P)
    sums_P.index_add_(0, group_index_B, values_B)
    counts_P.index_add_(0, group_index_B, torch.ones_like(values_B))
    return sums_P / counts_P.clamp(min=1.0)


def group_std(values_B: Tensor, group_index_B: Tensor, num_groups: int) -> Tensor:
    """Sample standard deviation (Bessel-corrected, as ``torch.std``) within each group, shape P.

    A group of one has std 0.
    """
    mean_P = group_mean(values_B, group_index_B, num_groups)
    squares_P = torch.zeros_like(mean_P).index_add_(0, group_index_B, (values_B - mean_P[group_index_B]) ** 2)
    counts_P = torch.zeros_like(mean_P).index_add_(0, group_index_B, torch.ones_like(values_B))
    return (squares_P / (counts_P - 1.0).clamp(min=1.0)).sqrt()


def group_counts(group_index_B: Tensor, num_groups: int) -> Tensor:
    """Members per group, shape P (float)."""
    return torch.zeros(num_groups, device=group_index_B.device).index_add_(
        0, group_index_B, torch.ones(group_index_B.shape[0], device=group_index_B.device)
    )


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(values_B_T: Tensor, mask_B_T: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over masked entries (unbiased std); masked-out entries become 0."""
    mean = masked_mean(values_B_T, mask_B_T)
    count = mask_B_T.sum()
    variance = (((values_B_T - mean) ** 2) * mask_B_T).sum() / (count - 1.0).clamp(min=1.0)
    return (values_B_T - mean) / (variance.sqrt() + eps) * mask_B_T


def returns_to_go(token_rewards_B_T: Tensor, mask_B_T: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{t' >= t, trained} gamma^(k) r_t' over trained tokens; untrained tokens pass G through.

    Discounting counts trained tokens only, so environment tokens in agentic turns do not decay rewards.
    """
    returns_B_T = torch.zeros_like(token_rewards_B_T)
    running_B = torch.zeros_like(token_rewards_B_T[:, 0])
    for t in reversed(range(token_rewards_B_T.shape[1])):
        m_B = mask_B_T[:, t]
        running_B = m_B * (token_rewards_B_T[:, t] + gamma * running_B) + (1.0 - m_B) * running_B
        returns_B_T[:, t] = running_B
    return returns_B_T * mask_B_T


def broadcast_scores(scores_B: Tensor, mask_B_T: Tensor) -> Tensor:
    """Place a per-sequence advantage on each trained token."""
    return scores_B.unsqueeze(-1) * mask_B_T


def advantage_metrics(advantages_B_T: Tensor, mask_B_T: Tensor) -> Metrics:
    """Mean, std, min and max of advantages over trained tokens."""
    selected = advantages_B_T[mask_B_T > 0]
    if selected.numel() == 0:
        return {"reward/advantage_mean": 0.0, "reward/advantage_std": 0.0}
    return {
        "reward/advantage_mean": float(selected.mean()),
        "reward/advantage_std": float(selected.std()) if selected.numel() > 1 else 0.0,
        "reward/advantage_min": float(selected.min()),
        "reward/advantage_max": float(selected.max()),
    }
