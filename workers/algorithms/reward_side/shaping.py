"""Reward shaping: terms added to the token rewards before the advantage estimator sees them.

Each takes the token rewards (B x T), a ``ShapingContext`` and its params, and returns the shaped rewards
and metrics. Group filtering always looks at the raw score, never at the shaped one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import Params, param, replace_params
from policyopt.workers.algorithms.registry import KL_ESTIMATORS, REWARD_SHAPING
from policyopt.workers.algorithms.reward_side.common import Metrics, masked_mean


@dataclass
class ShapingContext:
    """Args:
    mask_B_T: 1.0 on trained tokens.
    last_token_B_T: 1.0 on the token that carries each sequence's score.
    completion_lengths_B: completion tokens per sequence (environment tokens included).
    max_completion_length: the run's max_new_tokens (0 when unknown).
    logp_B_T: the trainer's log-probs before the update (for KL), when a choice needs them.
    ref_logp_B_T: log-probs with the adapter disabled, when a choice needs them.
    """

    mask_B_T: Tensor
    last_token_B_T: Tensor
    completion_lengths_B: Tensor
    max_completion_length: int = 0
    logp_B_T: Tensor | None = None
    ref_logp_B_T: Tensor | None = None


@dataclass(frozen=True)
class OverlongPenaltyParams(Params):
    max_length: int = param(0, "L_max; 0 uses the run's max_new_tokens.")
    buffer_length: int = param(
        0, "L_cache, the soft zone before L_max where the penalty ramps; 0 uses L_max/4."
    )
    penalty: float = param(1.0, "Penalty at and beyond L_max; raise it if truncated answers still pay off.")

    def validate(self) -> list[str]:
        problems = [] if self.max_length >= 0 else ["max_length must be >= 0 (0: the run's max_new_tokens)"]
        return problems + ([] if self.buffer_length >= 0 else ["buffer_length must be >= 0"])


@REWARD_SHAPING.register(
    "overlong_penalty",
    params=OverlongPenaltyParams,
    rationale="DAPO soft overlong punishment: truncated answers stop looking like long correct ones.",
)
def shape_overlong_penalty(
    token_rewards_B_T: Tensor, context: ShapingContext, params: OverlongPenaltyParams
) -> tuple[Tensor, Metrics]:
    """R_len(y) = 0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache if |y| <= L_max; else -1.

    Scaled by ``penalty`` and added to the score. DAPO, Yu et al. 2025, arXiv:2503.14476 (eq. 13).
    """
    max_length = params.max_length or context.max_completion_length
    if max_length <= 0:
        raise ValueError(
            "overlong_penalty needs a length limit: pass max_completion_length (the run's max_new_tokens) to "
            "PolicyUpdater, or set reward_side.shaping.overlong_penalty.max_length"
        )
    buffer = params.buffer_length or max(1, max_length // 4)
    lengths_B = context.completion_lengths_B.float()
    soft_B = ((max_length - buffer) - lengths_B) / buffer
    penalty_B = torch.where(lengths_B <= max_length - buffer, torch.zeros_like(lengths_B), soft_B)
    penalty_B = torch.where(lengths_B > max_length, torch.full_like(lengths_B, -1.0), penalty_B)
    penalty_B = params.penalty * penalty_B
    shaped_B_T = token_rewards_B_T + penalty_B.unsqueeze(-1) * context.last_token_B_T
    return shaped_B_T, {"reward/overlong_penalty_mean": float(penalty_B.mean())}


@dataclass(frozen=True)
class LengthPenaltyParams(Params):
    coef: float = param(1e-3, "Reward lost per completion token; raise it when lengths grow without gain.")


@REWARD_SHAPING.register(
    "length_penalty", params=LengthPenaltyParams, rationale="Linear cost per token: discourages verbosity."
)
def shape_length_penalty(
    token_rewards_B_T: Tensor, context: ShapingContext, params: LengthPenaltyParams
) -> tuple[Tensor, Metrics]:
    """score -= coef * |y|, added at the scored token."""
    penalty_B = -params.coef * context.completion_lengths_B.float()
    shaped_B_T = token_rewards_B_T + penalty_B.unsqueeze(-1) * context.last_token_B_T
    return shaped_B_T, {"reward/length_penalty_mean": float(penalty_B.mean())}


@dataclass(frozen=True)
class KLPenaltyParams(Params):
    coef: float = param(
        0.01, "beta: reward lost per nat of KL to the reference; raise it if the policy drifts."
    )
    estimator: Literal["k1", "k2", "k3", "abs"] = param(
        "k1", "k1 is the unbiased log-ratio (standard in the reward); k2/k3/abs are always >= 0."
    )
    clamp: Literal["log_ratio", "value"] = param(
        "log_ratio", "k3 only, as trajectory_side.kl.clamp: 'value' bounds k3 to [-10, 10] as verl does."
    )

    def validate(self) -> list[str]:
        return [] if self.coef >= 0 else [f"coef must be >= 0; got {self.coef}"]


@REWARD_SHAPING.register(
    "kl_penalty",
    params=KLPenaltyParams,
    needs=("reference",),
    rationale="KL to the reference folded into each token's reward (InstructGPT, REINFORCE++).",
)
def shape_kl_penalty(
    token_rewards_B_T: Tensor, context: ShapingContext, params: KLPenaltyParams
) -> tuple[Tensor, Metrics]:
    """r_t -= beta * KL_t(pi_old || pi_ref) on trained tokens. Ouyang et al. 2022; Hu 2025.

    The estimator runs with its default params, plus ``clamp`` where it has one (k3).
    """
    if context.logp_B_T is None or context.ref_logp_B_T is None:
        raise ValueError("kl_penalty needs the trainer's and the reference's log-probs")
    kl = KL_ESTIMATORS.get(params.estimator)
    kl_params = kl.params_type()
    if "clamp" in {f.name for f in dataclasses.fields(kl_params)}:
        kl_params = replace_params(kl_params, {"clamp": params.clamp}, "reward_side.shaping.kl_penalty")
    kl_B_T = kl.fn(context.logp_B_T, context.ref_logp_B_T, kl_params) * context.mask_B_T
    metrics = {"reward/kl_penalty_kl_mean": float(masked_mean(kl_B_T, context.mask_B_T))}
    return token_rewards_B_T - params.coef * kl_B_T, metrics
