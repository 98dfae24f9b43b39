"""Selective log-softmax: log p(y_n) (and entropy) for N chosen positions, from hidden states and the LM head.

Only completion positions are scored, and the full N x V logits are never stored: the vocabulary is walked
in chunks with an online log-sum-exp (as flash attention does), and the one quantity the backward needs,
E_p[W] = sum_v p_v W_v (N x H), is accumulated in the same pass. The backward is then one gather:

    d log p(y) / d h = (W_y - E_p[W]) / tau
    d H / d h       = -(E_p[z W] - E_p[z] E_p[W]) / tau      (z the tempered logits)

Two LM-head GEMMs per call (forward logits, p @ W) against three for recompute-in-backward kernels, and
O(N x H) memory for the backward instead of O(N x V).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

EntropyMode = Literal["none", "value", "grad"]


def _fold_vocab(
    hidden_n_H: Tensor,
    weight_V_H: Tensor,
    targets_n: Tensor,
    inv_temperature: float,
    vocab_chunk: int,
    mode: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One token chunk: log p(target), E_p[W], and (by mode) entropy, E_p[z], E_p[z W]; all fp32."""
    n, vocab = hidden_n_H.shape[0], weight_V_H.shape[0]
    device = hidden_n_H.device
    running_max_n = torch.full((n,), float("-inf"), device=device)
    sum_exp_n = torch.zeros(n, device=device)
    target_logit_n = torch.zeros(n, device=device)
    expected_W_n_H = torch.zeros(n, weight_V_H.shape[1], device=device)
    sum_exp_z_n = torch.zeros(n, device=device) if mode != "none" else None
    expected_zW_n_H = torch.zeros_like(expected_W_n_H) if mode == "grad" else None
    for start in range(0, vocab, vocab_chunk):
        weight_c_H = weight_V_H[start : start + vocab_chunk]
        z_n_c = (hidden_n_H @ weight_c_H.t()).float() * inv_temperature
        new_max_n = torch.maximum(running_max_n, z_n_c.amax(-1))
        rescale_n = torch.exp(running_max_n - new_max_n)
        e_n_c = torch.exp(z_n_c - new_max_n.unsqueeze(-1))
        sum_exp_n = sum_exp_n * rescale_n + e_n_c.sum(-1)
        expected_W_n_H.mul_(rescale_n.unsqueeze(-1)).add_((e_n_c.to(weight_c_H.dtype) @ weight_c_H).float())
        if sum_exp_z_n is not None:
            ez_n_c = e_n_c * z_n_c
            sum_exp_z_n = sum_exp_z_n * rescale_n + ez_n_c.sum(-1)
            if expected_zW_n_H is not None:
                expected_zW_n_H.mul_(rescale_n.unsqueeze(-1)).add_(
                    (ez_n_c.to(weight_c_H.dtype) @ weight_c_H).float()
                )
        local_n = targets_n - start
        inside_n = (local_n >= 0) & (local_n < z_n_c.shape[1])
        picked_n = z_n_c.gather(1, local_n.clamp(0, z_n_c.shape[1] - 1).unsqueeze(1)).squeeze(1)
        target_logit_n = torch.where(inside_n, picked_n, target_logit_n)
        running_max_n = new_max_n
    log_z_n = running_max_n + torch.log(sum_exp_n)
    expected_W_n_H.div_(sum_exp_n.unsqueeze(-1))
    expected_z_n = sum_exp_z_n / sum_exp_n if sum_exp_z_n is not None else None
    entropy_n = log_z_n - expected_z_n if expected_z_n is not None else None
    if expected_zW_n_H is not None:
        expected_zW_n_H.div_(sum_exp_n.unsqueeze(-1))
    return target_logit_n - log_z_n, expected_W_n_H, entropy_n, expected_z_n, expected_zW_n_H


class _FusedSelectiveLogSoftmax(torch.autograd.Function):
    """Autograd wrapper of ``_fold_vocab`` over token chunks; gradient flows to the hidden states only."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_N_H: Tensor,
        weight_V_H: Tensor,
        targets_N: Tensor,
        inv_temperature: float,
        mode: str,
        vocab_chunk: int,
        token_chunk: int,
    ) -> tuple[Tensor, Tensor]:
        parts = [
            _fold_vocab(hidden_N_H[s : s + token_chunk], weight_V_H, targets_N[s : s + token_chunk],
                        inv_temperature, vocab_chunk, mode)
            for s in range(0, hidden_N_H.shape[0], token_chunk)
        ]  # fmt: skip
        logp_N = torch.cat([p[0] for p in parts])
        expected_W_N_H = torch.cat([p[1] for p in parts])
        entropy_N = torch.cat([p[2] for p in parts]) if mode != "none" else torch.zeros_like(logp_N)  # type: ignore[misc]
        if mode == "grad":
            expected_z_N = torch.cat([p[3] for p in parts])  # type: ignore[misc]
            expected_zW_N_H = torch.cat([p[4] for p in parts])  # type: ignore[misc]
            ctx.save_for_backward(weight_V_H, targets_N, expected_W_N_H, expected_z_N, expected_zW_N_H)
        else:
            ctx.save_for_backward(weight_V_H, targets_N, expected_W_N_H)
        ctx.inv_temperature, ctx.mode, ctx.hidden_dtype = inv_temperature, mode, hidden_N_H.dtype
        if mode != "grad":
            ctx.mark_non_differentiable(entropy_N)
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx: Any, grad_logp_N: Tensor, grad_entropy_N: Tensor | None) -> tuple[Tensor | None, ...]:
        weight_V_H, targets_N, expected_W_N_H = ctx.saved_tensors[:3]
        grad_N_H = grad_logp_N.float().unsqueeze(-1) * (weight_V_H[targets_N].float() - expected_W_N_H)
        if ctx.mode == "grad" and grad_entropy_N is not None:
            expected_z_N, expected_zW_N_H = ctx.saved_tensors[3:]
            covariance_N_H = expected_zW_N_H - expected_z_N.unsqueeze(-1) * expected_W_N_H
            grad_N_H = grad_N_H - grad_entropy_N.float().unsqueeze(-1) * covariance_N_H
        grad_N_H = (grad_N_H * ctx.inv_temperature).to(ctx.hidden_dtype)
        return grad_N_H, None, None, None, None, None, None


def _reference_selective_log_softmax(
    hidden_N_H: Tensor, weight_V_H: Tensor, bias_V: Tensor | None, targets_N: Tensor, temperature: float,
    mode: EntropyMode, token_chunk: int,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Plain autograd (stores logits per chunk). Used when the LM head itself trains, or has a bias."""
    logps, entropies = [], []
    for s in range(0, hidden_N_H.shape[0], token_chunk):
        logits_n_V = F.linear(hidden_N_H[s : s + token_chunk], weight_V_H, bias_V).float() / temperature
        log_probs_n_V = torch.log_softmax(logits_n_V, dim=-1)
        logps.append(log_probs_n_V.gather(1, targets_N[s : s + token_chunk].unsqueeze(1)).squeeze(1))
        if mode != "none":
            entropy_n = -(log_probs_n_V.exp() * log_probs_n_V).sum(-1)
            entropies.append(entropy_n if mode == "grad" else entropy_n.detach())
    return torch.cat(logps), (torch.cat(entropies) if mode != "none" else None)


def selective_log_softmax(
    hidden_N_H: Tensor,
    weight_V_H: Tensor,
    targets_N: Tensor,
    *,
    bias_V: Tensor | None = None,
    temperature: float = 1.0,
    entropy: EntropyMode = "none",
    vocab_chunk: int = 8192,
    token_chunk: int = 512,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(h W^T / tau)[y] for each of N rows, fp32, without storing N x V logits.

    Args:
        hidden_N_H: hidden states of the positions that predict ``targets_N`` (only those).
        weight_V_H: the LM head weight (frozen; if it requires grad, a plain autograd path is used).
        targets_N: token ids.
        entropy: "none", "value" (entropy without gradient) or "grad" (entropy with gradient).
    Returns:
        log-probs (N,) and entropy (N,) or None.
    """
    if hidden_N_H.shape[0] == 0:  # still connected to the graph, so backward() works on an all-masked batch
        empty_N = hidden_N_H.float().sum(-1)
        return empty_N, (empty_N.detach() if entropy != "none" else None)
    if weight_V_H.requires_grad or bias_V is not None:
        return _reference_selective_log_softmax(
            hidden_N_H, weight_V_H, bias_V, targets_N, temperature, entropy, token_chunk
        )
    logp_N, entropy_N = _FusedSelectiveLogSoftmax.apply(
        hidden_N_H, weight_V_H, targets_N, 1.0 / temperature, entropy, vocab_chunk, token_chunk
    )
    return logp_N, (entropy_N if entropy != "none" else None)
