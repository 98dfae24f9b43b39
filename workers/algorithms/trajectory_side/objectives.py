"""Policy objectives: how log p_theta enters the per-token loss (B x T).

Each takes the current log-probs, the old (pre-update) log-probs, the advantages and the mask, and returns
the per-token loss and per-token metric tensors (averaged over trained tokens by the caller).
Metric names ending in ``_max``/``_min`` are reduced by max/min instead of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.workers.algorithms.params import NoParams, Params, param
from policyopt.workers.algorithms.registry import OBJECTIVES

TokenMetrics = dict[str, Tensor]
_MAX_LOG_RATIO = 20.0


def _ratio_metrics(ratio_B_T: Tensor) -> TokenMetrics:
    ratio_B_T = ratio_B_T.detach()
    return {
        "trajectory/ratio_mean": ratio_B_T,
        "trajectory/ratio_max": ratio_B_T,
        "trajectory/ratio_min": ratio_B_T,
    }


@OBJECTIVES.register(
    "vanilla_pg",
    params=NoParams,
    rationale="-A log p: plain policy gradient; no trust region, on-policy only.",
)
def compute_vanilla_pg_loss(
    logp_B_T: Tensor, old_logp_B_T: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor, params: Params
) -> tuple[Tensor, TokenMetrics]:
    """l_t = -A_t log pi_theta(y_t). Williams 1992."""
    ratio_B_T = torch.exp((logp_B_T - old_logp_B_T).clamp(max=_MAX_LOG_RATIO))
    return -advantages_B_T * logp_B_T, _ratio_metrics(ratio_B_T)


@dataclass(frozen=True)
class PPOClipParams(Params):
    eps_low: float = param(
        0.2, "Lower clip 1 - eps_low on the ratio; limits how fast a token's prob can fall."
    )
    eps_high: float = param(
        0.2,
        "Upper clip 1 + eps_high; DAPO's clip-higher (0.28) lets rare tokens rise, avoiding entropy collapse.",
    )
    dual_clip: float = param(
        0.0,
        "Dual-clip c > 1 bounds the loss at -c A for negative A (Ye et al. 2020); 0, policyopt's default, "
        "turns it off. verl always dual-clips with c = 3 (clip_ratio_c): set 3 for verl's behaviour.",
    )

    def validate(self) -> list[str]:
        problems = [] if 0 < self.eps_low < 1 else [f"eps_low must be in (0, 1); got {self.eps_low}"]
        problems += [] if self.eps_high > 0 else [f"eps_high must be > 0; got {self.eps_high}"]
        return problems + (
            [] if self.dual_clip == 0 or self.dual_clip > 1 else ["dual_clip must be 0 or > 1"]
        )


def _clipped_surrogate(
    ratio_B_T: Tensor, advantages_B_T: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, TokenMetrics]:
    """max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)) with DAPO-style low/high clip indicators."""
    unclipped_B_T = -advantages_B_T * ratio_B_T
    clipped_B_T = -advantages_B_T * ratio_B_T.clamp(1.0 - eps_low, 1.0 + eps_high)
    ratio_detached_B_T = ratio_B_T.detach()
    metrics = _ratio_metrics(ratio_B_T) | {
        "trajectory/clip_fraction_low": ((ratio_detached_B_T < 1 - eps_low) & (advantages_B_T < 0)).float(),
        "trajectory/clip_fraction_high": ((ratio_detached_B_T > 1 + eps_high) & (advantages_B_T > 0)).float(),
    }
    return torch.maximum(unclipped_B_T, clipped_B_T), metrics


@OBJECTIVES.register(
    "ppo_clip",
    params=PPOClipParams,
    rationale="PPO's clipped token ratio: safe reuse of samples; clip-higher and dual-clip are options.",
)
def compute_ppo_clip_loss(
    logp_B_T: Tensor, old_logp_B_T: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor, params: PPOClipParams
) -> tuple[Tensor, TokenMetrics]:
    """l_t = max(-A r_t, -A clip(r_t, 1-eps_low, 1+eps_high)), r_t = pi_theta/pi_old; dual-clip: for A < 0,
    min(l_t, -c A). Schulman et al. 2017 (arXiv:1707.06347); Ye et al. 2020 (arXiv:1912.09729); DAPO.
    """
    ratio_B_T = torch.exp((logp_B_T - old_logp_B_T).clamp(max=_MAX_LOG_RATIO))
    loss_B_T, metrics = _clipped_surrogate(ratio_B_T, advantages_B_T, params.eps_low, params.eps_high)
    if params.dual_clip > 1:
        bound_B_T = -advantages_B_T * params.dual_clip
        dual_B_T = (advantages_B_T < 0) & (loss_B_T > bound_B_T)
        loss_B_T = torch.where(dual_B_T, bound_B_T, loss_B_T)
        metrics["trajectory/dual_clip_fraction"] = dual_B_T.float()
    return loss_B_T, metrics


@dataclass(frozen=True)
class GSPOParams(Params):
    eps_low: float = param(
        3e-4, "Lower clip on the sequence ratio; GSPO's ratios live near 1, so keep it tiny."
    )
    eps_high: float = param(4e-4, "Upper clip on the sequence ratio.")

    def validate(self) -> list[str]:
        ok = 0 < self.eps_low < 1 and self.eps_high > 0
        return [] if ok else ["eps_low must be in (0, 1) and eps_high > 0"]


@OBJECTIVES.register(
    "gspo",
    params=GSPOParams,
    rationale="Sequence-level ratio (geometric mean) and clipping: matches a sequence reward; stable for MoE.",
)
def compute_gspo_loss(
    logp_B_T: Tensor, old_logp_B_T: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor, params: GSPOParams
) -> tuple[Tensor, TokenMetrics]:
    """s_i = exp(mean_t (log pi_theta - log pi_old)); token form s_it = sg(s_i) pi_theta(y_t)/sg(pi_theta(y_t)),
    l_it = max(-A s_it, -A clip(s_it, 1-eps_low, 1+eps_high)). Zheng et al. 2025, arXiv:2507.18071 (GSPO-token).
    """
    log_ratio_B_T = (logp_B_T - old_logp_B_T) * mask_B_T
    seq_log_ratio_B = log_ratio_B_T.sum(-1) / mask_B_T.sum(-1).clamp(min=1.0)
    seq_log_ratio_B_T = seq_log_ratio_B.detach().unsqueeze(-1) + logp_B_T - logp_B_T.detach()
    ratio_B_T = torch.exp(seq_log_ratio_B_T.clamp(max=_MAX_LOG_RATIO))
    return _clipped_surrogate(ratio_B_T, advantages_B_T, params.eps_low, params.eps_high)


@dataclass(frozen=True)
class CISPOParams(Params):
    max_weight: float = param(5.0, "Upper bound on the IS weight; bounds variance without dropping tokens.")
    min_weight: float = param(0.0, "Lower bound on the IS weight; 0 leaves it unbounded below.")

    def validate(self) -> list[str]:
        ok = 0 <= self.min_weight < self.max_weight
        return [] if ok else ["need 0 <= min_weight < max_weight"]


@OBJECTIVES.register(
    "cispo",
    params=CISPOParams,
    rationale="Clips the IS weight, not the update: every token keeps a gradient (MiniMax-M1).",
)
def compute_cispo_loss(
    logp_B_T: Tensor, old_logp_B_T: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor, params: CISPOParams
) -> tuple[Tensor, TokenMetrics]:
    """l_t = -sg(clip(r_t, min_weight, max_weight)) A_t log pi_theta(y_t). MiniMax 2025, arXiv:2506.13585."""
    ratio_B_T = torch.exp((logp_B_T - old_logp_B_T).detach().clamp(max=_MAX_LOG_RATIO))
    weight_B_T = ratio_B_T.clamp(params.min_weight, params.max_weight)
    metrics = _ratio_metrics(ratio_B_T) | {
        "trajectory/clip_fraction_high": (ratio_B_T > params.max_weight).float(),
        "trajectory/clip_fraction_low": (ratio_B_T < params.min_weight).float(),
    }
    return -weight_B_T * advantages_B_T * logp_B_T, metrics
