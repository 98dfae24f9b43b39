"""Sampler/trainer mismatch correction: weights on the per-token policy loss (B x T), detached.

The sampler (vLLM, another precision, a stale adapter) and the trainer disagree on log-probs. With
rho = pi_trainer_old(y) / pi_sampler(y) from the stored sampler log-probs, truncated importance sampling
reweights by min(rho, cap) and masking drops tokens (or sequences) whose rho leaves [low, high]; masked IS
does both: weight rho where it stays in [low, high], 0 elsewhere.
Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training" (TIS);
Liu et al. 2025, "When speed kills stability" (sequence-level masking);
Fu et al. 2025, AReaL, arXiv:2505.24298 (decoupled PPO: masked IS from the proximal to the behaviour policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import NoParams, Params, param
from policyopt.workers.algorithms.registry import MISMATCH_CORRECTIONS

TokenMetrics = dict[str, Tensor]
_MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class TruncationParams(Params):
    cap: float = param(2.0, "Upper bound on the IS weight; lower means less variance and more bias.")

    def validate(self) -> list[str]:
        return [] if self.cap >= 1 else [f"cap must be >= 1; got {self.cap}"]


@dataclass(frozen=True)
class MaskingParams(Params):
    low: float = param(0.5, "Drop where the ratio falls below this.")
    high: float = param(2.0, "Drop where the ratio rises above this.")

    def validate(self) -> list[str]:
        return [] if 0 <= self.low < 1 < self.high else ["need 0 <= low < 1 < high"]


def _log_ratio(old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    return ((old_logp_B_T - sampler_logp_B_T) * mask_B_T).detach()


def _sequence_log_ratio(log_ratio_B_T: Tensor, mask_B_T: Tensor, mean: bool) -> Tensor:
    total_B = log_ratio_B_T.sum(-1)
    return total_B / mask_B_T.sum(-1).clamp(min=1.0) if mean else total_B


def _token_ratio(old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """rho_t = pi_old / pi_sampler per token, its log clamped so exp stays finite."""
    return torch.exp(_log_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T).clamp(max=_MAX_LOG_RATIO))


@MISMATCH_CORRECTIONS.register(
    "none", params=NoParams, rationale="Trust the sampler's log-probs as on-policy."
)
def correct_nothing(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: Params
) -> tuple[Tensor, TokenMetrics]:
    """w = 1."""
    return torch.ones_like(mask_B_T), {}


@MISMATCH_CORRECTIONS.register(
    "token_tis", params=TruncationParams, rationale="Per-token truncated IS: min(rho_t, cap)."
)
def correct_token_tis(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: TruncationParams
) -> tuple[Tensor, TokenMetrics]:
    """w_t = min(rho_t, cap)."""
    rho_B_T = _token_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T)
    weights_B_T = rho_B_T.clamp(max=params.cap)
    return weights_B_T, {"trajectory/mismatch_truncated_fraction": (rho_B_T > params.cap).float()}


@MISMATCH_CORRECTIONS.register(
    "token_mask", params=MaskingParams, rationale="Drop tokens the sampler and trainer disagree on."
)
def correct_token_mask(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: MaskingParams
) -> tuple[Tensor, TokenMetrics]:
    """w_t = 1[low <= rho_t <= high]."""
    rho_B_T = _token_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T)
    weights_B_T = ((rho_B_T >= params.low) & (rho_B_T <= params.high)).float()
    return weights_B_T, {"trajectory/mismatch_masked_fraction": 1.0 - weights_B_T}


@MISMATCH_CORRECTIONS.register(
    "token_masked_is",
    params=MaskingParams,
    rationale="Per-token IS weight rho_t, dropped where it leaves [low, high]: AReaL's decoupled PPO.",
)
def correct_token_masked_is(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: MaskingParams
) -> tuple[Tensor, TokenMetrics]:
    """w_t = rho_t 1[low <= rho_t <= high]: unbiased where kept, and a very stale token is dropped rather than
    truncated. Fu et al. 2025 (AReaL), arXiv:2505.24298."""
    rho_B_T = _token_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T)
    keep_B_T = (rho_B_T >= params.low) & (rho_B_T <= params.high)
    weights_B_T = torch.where(keep_B_T, rho_B_T, torch.zeros_like(rho_B_T))
    return weights_B_T, {"trajectory/mismatch_masked_fraction": (~keep_B_T).float()}


@MISMATCH_CORRECTIONS.register(
    "sequence_tis",
    params=TruncationParams,
    rationale="Sequence-level truncated IS, min(prod_t rho_t, cap): unbiased for sequence rewards, more variance.",
)
def correct_sequence_tis(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: TruncationParams
) -> tuple[Tensor, TokenMetrics]:
    """w_i = min(prod_t rho_t, cap) on every token of sequence i."""
    log_ratio_B = _sequence_log_ratio(
        _log_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T), mask_B_T, mean=False
    )
    rho_B = torch.exp(log_ratio_B.clamp(max=_MAX_LOG_RATIO))
    weights_B_T = rho_B.clamp(max=params.cap).unsqueeze(-1).expand_as(mask_B_T)
    truncated_B_T = (rho_B > params.cap).float().unsqueeze(-1).expand_as(mask_B_T)
    return weights_B_T, {"trajectory/mismatch_truncated_fraction": truncated_B_T}


@MISMATCH_CORRECTIONS.register(
    "sequence_mask",
    params=MaskingParams,
    rationale="Drop whole sequences whose geometric-mean ratio leaves [low, high]: removes broken rollouts.",
)
def correct_sequence_mask(
    old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: MaskingParams
) -> tuple[Tensor, TokenMetrics]:
    """w_i = 1[low <= exp(mean_t log rho_t) <= high] on every token of sequence i."""
    log_ratio_B = _sequence_log_ratio(
        _log_ratio(old_logp_B_T, sampler_logp_B_T, mask_B_T), mask_B_T, mean=True
    )
    rho_B = torch.exp(log_ratio_B)
    keep_B = ((rho_B >= params.low) & (rho_B <= params.high)).float()
    weights_B_T = keep_B.unsqueeze(-1).expand_as(mask_B_T).contiguous()
    return weights_B_T, {"trajectory/mismatch_masked_fraction": 1.0 - weights_B_T}
