"""Group filters (DAPO dynamic sampling): which groups carry a learning signal. Always on the raw score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import NoParams, Params, param
from policyopt.workers.algorithms.registry import GROUP_FILTERS
from policyopt.workers.algorithms.reward_side.common import group_std


@dataclass(frozen=True)
class GroupFilterParams(Params):
    max_extra_rounds: int = param(
        3,
        "Extra sampling rounds the rollout side may spend refilling the batch before training on fewer groups.",
    )

    def validate(self) -> list[str]:
        return [] if self.max_extra_rounds >= 0 else ["max_extra_rounds must be >= 0"]


@dataclass(frozen=True)
class ZeroVarianceFilterParams(GroupFilterParams):
    min_std: float = param(0.0, "Groups whose raw-score std is at or below this count as zero-variance.")


@GROUP_FILTERS.register("none", params=NoParams, rationale="Train on every group.")
def keep_all_groups(raw_scores_B: Tensor, group_index_B: Tensor, num_groups: int, params: Params) -> Tensor:
    """Keep mask of shape P: all True."""
    return torch.ones(num_groups, dtype=torch.bool)


@GROUP_FILTERS.register(
    "zero_variance",
    params=ZeroVarianceFilterParams,
    rationale="DAPO dynamic sampling: groups whose members all scored the same give no gradient; drop them.",
)
def keep_varied_groups(
    raw_scores_B: Tensor, group_index_B: Tensor, num_groups: int, params: ZeroVarianceFilterParams
) -> Tensor:
    """Keep mask of shape P: std_group(raw score) > min_std. Yu et al. 2025, arXiv:2503.14476, sec. 3.2."""
    return group_std(raw_scores_B.double(), group_index_B, num_groups) > params.min_std
