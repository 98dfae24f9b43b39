"""Trajectory side: how log p_theta enters the loss and how the per-token loss is aggregated.

Importing this package registers every objective, KL estimator, aggregation and mismatch correction.
"""

from policyopt.workers.algorithms.trajectory_side import aggregation, kl, mismatch, objectives
from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals

__all__ = ["StepTotals", "aggregation", "kl", "mismatch", "objectives"]
