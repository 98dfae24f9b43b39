"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL divergence", 2020).

With samples y ~ pi_theta and log-ratio d = log pi_ref(y) - log pi_theta(y):
k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, >= 0), k3 = e^d - 1 - d (unbiased, >= 0).
Used by the trajectory-side KL loss (``trajectory_side.kl``) and by ``reward_side.shaping`` ``kl_penalty``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import Params, param
from policyopt.workers.algorithms.registry import KL_ESTIMATORS

_MAX_LOG_RATIO = 20.0  # keeps k3 finite when a token's log-ratio explodes


@dataclass(frozen=True)
class KLLossParams(Params):
    coef: float = param(
        0.0,
        "beta of the KL-to-reference loss term; 0 turns it off (and skips the reference forward). "
        "GRPO used 0.04; raise it if the policy drifts or reward-hacks.",
    )

    def validate(self) -> list[str]:
        return [] if self.coef >= 0 else [f"coef must be >= 0; got {self.coef}"]

    def needs(self) -> frozenset[str]:
        return frozenset({"reference"}) if self.coef > 0 else frozenset()


@KL_ESTIMATORS.register("k1", params=KLLossParams, rationale="log pi - log pi_ref: unbiased, high variance.")
def estimate_kl_k1(logp_B_T: Tensor, ref_logp_B_T: Tensor) -> Tensor:
    """k1 = log pi_theta - log pi_ref."""
    return logp_B_T - ref_logp_B_T


@KL_ESTIMATORS.register("k2", params=KLLossParams, rationale="(log-ratio)^2 / 2: low variance, biased.")
def estimate_kl_k2(logp_B_T: Tensor, ref_logp_B_T: Tensor) -> Tensor:
    """k2 = 0.5 (log pi_theta - log pi_ref)^2."""
    return 0.5 * (logp_B_T - ref_logp_B_T) ** 2


@KL_ESTIMATORS.register(
    "k3", params=KLLossParams, rationale="e^d - 1 - d: unbiased and non-negative; GRPO's choice."
)
def estimate_kl_k3(logp_B_T: Tensor, ref_logp_B_T: Tensor) -> Tensor:
    """k3 = exp(d) - 1 - d, d = log pi_ref - log pi_theta (clamped to +/-20)."""
    d_B_T = (ref_logp_B_T - logp_B_T).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(d_B_T) - 1.0 - d_B_T
