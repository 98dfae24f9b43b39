"""Generalized advantage estimation (PPO's reward side), with its critic."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from policyopt.workers.algorithms.params import NoParams, Params, param
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS, CRITICS
from policyopt.workers.algorithms.reward_side.common import (
    AdvantageInputs,
    AdvantageResult,
    advantage_metrics,
    masked_whiten,
)


@dataclass(frozen=True)
class GAEParams(Params):
    gamma: float = param(1.0, "Discount per trained token; 1.0 is standard for LLMs (one reward at the end).")
    lam: float = param(0.95, "GAE lambda: lower trusts the critic more (less variance, more bias).")
    whiten: bool = param(
        True, "Whiten advantages over the batch, as PPO implementations do; off keeps scale."
    )

    def validate(self) -> list[str]:
        problems = [] if 0.0 <= self.gamma <= 1.0 else [f"gamma must be in [0, 1]; got {self.gamma}"]
        return problems + ([] if 0.0 <= self.lam <= 1.0 else [f"lam must be in [0, 1]; got {self.lam}"])


def compute_gae(
    token_rewards_B_T: Tensor, values_B_T: Tensor, mask_B_T: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  returns R_t = A_t + V_t.

    Schulman et al. 2016, arXiv:1506.02438. Untrained (environment) tokens are skipped: the next value and
    the running advantage pass through them unchanged. V after the last token is 0.
    """
    advantages_B_T = torch.zeros_like(token_rewards_B_T)
    next_value_B = torch.zeros_like(token_rewards_B_T[:, 0])
    last_advantage_B = torch.zeros_like(next_value_B)
    for t in reversed(range(token_rewards_B_T.shape[1])):
        m_B = mask_B_T[:, t]
        delta_B = token_rewards_B_T[:, t] + gamma * next_value_B - values_B_T[:, t]
        advantage_B = delta_B + gamma * lam * last_advantage_B
        last_advantage_B = m_B * advantage_B + (1.0 - m_B) * last_advantage_B
        next_value_B = m_B * values_B_T[:, t] + (1.0 - m_B) * next_value_B
        advantages_B_T[:, t] = last_advantage_B
    advantages_B_T = advantages_B_T * mask_B_T
    return advantages_B_T, (advantages_B_T + values_B_T) * mask_B_T


@ADVANTAGE_ESTIMATORS.register(
    "gae",
    params=GAEParams,
    needs=("values",),
    rationale="PPO's critic-based GAE: per-token credit assignment, at the cost of training a critic.",
)
def compute_gae_advantages(inputs: AdvantageInputs, params: GAEParams) -> AdvantageResult:
    """GAE advantages and critic returns (see ``compute_gae``); optionally whitened over the batch."""
    if inputs.values_B_T is None:
        raise ValueError("gae needs critic values; configure reward_side.critic = 'value_head'")
    advantages_B_T, returns_B_T = compute_gae(
        inputs.token_rewards_B_T, inputs.values_B_T, inputs.mask_B_T, params.gamma, params.lam
    )
    if params.whiten:
        advantages_B_T = masked_whiten(advantages_B_T, inputs.mask_B_T)
    return AdvantageResult(advantages_B_T, returns_B_T, advantage_metrics(advantages_B_T, inputs.mask_B_T))


@dataclass(frozen=True)
class ValueHeadParams(Params):
    learning_rate: float = param(
        1e-3, "Critic learning rate; a critic usually needs more than the LoRA policy."
    )
    value_clip: float = param(
        0.2, "Clip V to V_old +/- this in the loss (PPO value clipping); 0 turns it off."
    )
    hidden_size: int = param(256, "Width of the head's hidden layer.")

    def validate(self) -> list[str]:
        problems = [] if self.learning_rate > 0 else ["learning_rate must be > 0"]
        problems += [] if self.value_clip >= 0 else ["value_clip must be >= 0 (0 turns clipping off)"]
        return problems + ([] if self.hidden_size > 0 else ["hidden_size must be > 0"])


class ValueHead(nn.Module):
    """V(s_t) from the policy's last hidden state at the position that predicts token t (detached)."""

    def __init__(self, model_hidden_size: int, hidden_size: int) -> None:
        super().__init__()
        output = nn.Linear(hidden_size, 1)
        nn.init.zeros_(output.weight)  # V = 0 at the start: the first advantages are plain returns
        nn.init.zeros_(output.bias)
        self.net = nn.Sequential(nn.Linear(model_hidden_size, hidden_size), nn.GELU(), output)

    def forward(self, hidden_N_H: Tensor) -> Tensor:
        return self.net(hidden_N_H.detach().float()).squeeze(-1)


@CRITICS.register("none", params=NoParams, rationale="No critic: for critic-free estimators.")
def build_no_critic(model_hidden_size: int, params: Params) -> None:
    return None


@CRITICS.register(
    "value_head",
    params=ValueHeadParams,
    provides=("values",),
    rationale="Small MLP on the policy's detached last hidden states: no second model or forward pass.",
)
def build_value_head(model_hidden_size: int, params: ValueHeadParams) -> ValueHead:
    return ValueHead(model_hidden_size, params.hidden_size)


def compute_value_loss(
    values_B_T: Tensor, old_values_B_T: Tensor, returns_B_T: Tensor, value_clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2). PPO value clipping.

    Returns the per-token loss and per-token metrics (``trajectory/value_clip_fraction``).
    """
    unclipped_B_T = (values_B_T - returns_B_T) ** 2
    if value_clip <= 0:
        return 0.5 * unclipped_B_T, {}
    clipped_values_B_T = old_values_B_T + (values_B_T - old_values_B_T).clamp(-value_clip, value_clip)
    clipped_B_T = (clipped_values_B_T - returns_B_T) ** 2
    metrics = {"trajectory/value_clip_fraction": (clipped_B_T > unclipped_B_T).float()}
    return 0.5 * torch.maximum(unclipped_B_T, clipped_B_T), metrics
