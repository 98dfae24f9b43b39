"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL divergence", 2020).

With samples y ~ pi_theta and log-ratio d = log pi_ref(y) - log pi_theta(y):
k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, >= 0), k3 = e^d - 1 - d (unbiased, >= 0),
abs = |d| (biased, >= 0; verl's ``abs``). Used by the trajectory-side KL loss (``trajectory_side.kl``) and by
``reward_side.shaping`` ``kl_penalty``.

k3 is kept finite by a clamp whose convention differs between libraries: policyopt clamps d to +/-20 before
the exponential (``clamp="log_ratio"``); verl (``core_algos.kl_penalty_forward``) also clamps the value of k3
to [-10, 10] (``clamp="value"``), which zeroes its gradient wherever k3 > 10 (d above about 2.6 or below -11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import Params, param
from policyopt.workers.algorithms.registry import KL_ESTIMATORS

_MAX_LOG_RATIO = 20.0  # keeps k3 finite when a token's log-ratio explodes
_MAX_K3_VALUE = 10.0  # verl's bound on the k3 value (clamp="value")


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


@dataclass(frozen=True)
class K3Params(KLLossParams):
    clamp: Literal["log_ratio", "value"] = param(
        "log_ratio",
        "log_ratio: clamp d to +/-20 before exp, so k3 stays finite and keeps its gradient. value: also clamp "
        "k3 to [-10, 10] as verl does; tokens with k3 > 10 (d > ~2.6) then get no KL gradient at all.",
    )


@KL_ESTIMATORS.register("k1", params=KLLossParams, rationale="log pi - log pi_ref: unbiased, high variance.")
def estimate_kl_k1(logp_B_T: Tensor, ref_logp_B_T: Tensor, params: KLLossParams) -> Tensor:
    """k1 = log pi_theta - log pi_ref."""
    return logp_B_T - ref_logp_B_T


@KL_ESTIMATORS.register("k2", params=KLLossParams, rationale="(log-ratio)^2 / 2: low variance, biased.")
def estimate_kl_k2(logp_B_T: Tensor, ref_logp_B_T: Tensor, params: KLLossParams) -> Tensor:
    """k2 = 0.5 (log pi_theta - log pi_ref)^2."""
    return 0.5 * (logp_B_T - ref_logp_B_T) ** 2


@KL_ESTIMATORS.register(
    "k3", params=K3Params, rationale="e^d - 1 - d: unbiased and non-negative; GRPO's choice."
)
def estimate_kl_k3(logp_B_T: Tensor, ref_logp_B_T: Tensor, params: K3Params) -> Tensor:
    """k3 = exp(d) - 1 - d, d = log pi_ref - log pi_theta clamped to +/-20; ``clamp="value"`` also bounds k3
    to [-10, 10] (verl's ``low_var_kl``)."""
    d_B_T = (ref_logp_B_T - logp_B_T).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    k3_B_T = torch.exp(d_B_T) - 1.0 - d_B_T
    if params.clamp == "value":
        k3_B_T = k3_B_T.clamp(-_MAX_K3_VALUE, _MAX_K3_VALUE)
    return k3_B_T


@KL_ESTIMATORS.register(
    "abs",
    params=KLLossParams,
    rationale="|log pi - log pi_ref|: non-negative, biased; constant-size pull toward the reference (verl).",
)
def estimate_kl_abs(logp_B_T: Tensor, ref_logp_B_T: Tensor, params: KLLossParams) -> Tensor:
    """abs = |log pi_theta - log pi_ref|; its gradient sign(log pi_theta - log pi_ref) grad log pi_theta does
    not shrink as the two approach each other.

    verl ``core_algos.kl_penalty_forward`` (``kl_penalty="abs"``).
    """
    return (logp_B_T - ref_logp_B_T).abs()
