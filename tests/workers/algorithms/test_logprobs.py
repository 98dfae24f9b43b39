"""Selective log-softmax: the fused chunked path equals plain autograd, in values and gradients."""

from __future__ import annotations

import pytest
import torch

from policyopt.workers.algorithms.logprobs import _reference_selective_log_softmax, selective_log_softmax


@pytest.mark.parametrize("entropy", ["none", "value", "grad"])
@pytest.mark.parametrize(("vocab_chunk", "token_chunk"), [(7, 5), (64, 100), (1000, 3)])
def test_fused_matches_autograd(entropy: str, vocab_chunk: int, token_chunk: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight, targets = torch.randn(50, 16), torch.randint(0, 50, (23,))
    upstream_logp, upstream_entropy = torch.randn(23), torch.randn(23)

    def run(fn):
        logp, ent = fn()
        loss = (logp * upstream_logp).sum() + ((ent * upstream_entropy).sum() if entropy == "grad" else 0)
        (grad,) = torch.autograd.grad(loss, hidden)
        return logp.detach(), ent, grad

    fused = run(lambda: selective_log_softmax(
        hidden, weight, targets, temperature=0.7, entropy=entropy, vocab_chunk=vocab_chunk, token_chunk=token_chunk
    ))  # fmt: skip
    plain = run(lambda: _reference_selective_log_softmax(hidden, weight, None, targets, 0.7, entropy, 8))
    torch.testing.assert_close(fused[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[2], plain[2], atol=1e-4, rtol=1e-4)
    if entropy == "none":
        assert fused[1] is None
    else:
        torch.testing.assert_close(fused[1].detach(), plain[1].detach(), atol=1e-5, rtol=1e-5)


def test_matches_log_softmax_of_full_logits() -> None:
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(10, 8), torch.randn(30, 8), torch.randint(0, 30, (10,))
    logp, _ = selective_log_softmax(hidden, weight, targets, vocab_chunk=4)
    expected = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(logp, expected)


def test_trainable_head_uses_plain_autograd_and_gets_a_gradient() -> None:
    hidden, weight = torch.randn(4, 8), torch.randn(30, 8, requires_grad=True)
    logp, _ = selective_log_softmax(hidden, weight, torch.tensor([1, 2, 3, 4]))
    logp.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_empty_selection_returns_empty() -> None:
    logp, entropy = selective_log_softmax(
        torch.zeros(0, 8), torch.randn(30, 8), torch.zeros(0, dtype=torch.long), entropy="value"
    )
    assert logp.shape == (0,) and entropy is not None and entropy.shape == (0,)
