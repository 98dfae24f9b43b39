"""Reward side: from scores, masks and group ids to per-token advantages (B x T).

Importing this package registers every estimator, shaping term, group filter and critic.
"""

from policyopt.workers.algorithms.reward_side import (
    distillation,
    estimators,
    filtering,
    gae,
    group_estimators,
    shaping,
    turns,
)
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs, AdvantageResult
from policyopt.workers.algorithms.reward_side.gae import ValueHead, compute_value_loss
from policyopt.workers.algorithms.reward_side.shaping import ShapingContext

__all__ = [
    "AdvantageInputs",
    "AdvantageResult",
    "ShapingContext",
    "ValueHead",
    "compute_value_loss",
    "distillation",
    "estimators",
    "filtering",
    "gae",
    "group_estimators",
    "shaping",
    "turns",
]
