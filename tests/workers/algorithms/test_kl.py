"""KL estimators: abs, and k3's two clamp conventions (policyopt's log-ratio clamp, verl's value clamp)."""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import method_from_pinned, pin_method, resolve_method
from policyopt.workers.algorithms.registry import KL_ESTIMATORS, REWARD_SHAPING
from policyopt.workers.algorithms.reward_side.shaping import KLPenaltyParams, ShapingContext
from policyopt.workers.algorithms.spec import Choice, TrajectorySide
from policyopt.workers.algorithms.trajectory_side.kl import K3Params, KLLossParams
from policyopt.workers.algorithms.trajectory_side.loss import TokenLossInputs, compute_token_loss

# d = log pi_ref - log pi_theta per token. k3 = e^d - 1 - d is 9.86 at d = 2.6, 16.09 at d = 3, 11.0 at
# d = -12; its derivative in log pi_theta is -(e^d - 1).
LOG_RATIOS = [1.0, 2.6, 3.0, -12.0]


def k3_with_grad(clamp: str) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.zeros(1, len(LOG_RATIOS), dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([LOG_RATIOS], dtype=torch.float64)
    k3 = KL_ESTIMATORS.get("k3").fn(logp, ref, K3Params(clamp=clamp))
    (grad,) = torch.autograd.grad(k3.sum(), logp)
    return k3.detach()[0], grad[0]


def test_abs_is_the_absolute_log_ratio_with_sign_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0, -1.5]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, -1.5]])
    kl = KL_ESTIMATORS.get("abs").fn(logp, ref, KLLossParams())
    torch.testing.assert_close(kl.detach(), torch.tensor([[1.0, 1.0, 0.0]]))
    (grad,) = torch.autograd.grad(kl.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0, 0.0]]))


def test_k3_log_ratio_clamp_keeps_value_and_gradient() -> None:
    values, grads = k3_with_grad("log_ratio")
    expected_values = [math.exp(d) - 1 - d for d in LOG_RATIOS]
    expected_grads = [-(math.exp(d) - 1) for d in LOG_RATIOS]
    torch.testing.assert_close(values, torch.tensor(expected_values, dtype=torch.float64))
    torch.testing.assert_close(grads, torch.tensor(expected_grads, dtype=torch.float64))


def test_k3_value_clamp_caps_at_ten_and_zeroes_the_gradient_there() -> None:
    values, grads = k3_with_grad("value")
    # d = 1 and 2.6: k3 < 10, unchanged. d = 3 (16.09) and -12 (11.0): k3 > 10, capped, no gradient.
    expected_values = [math.e - 2, math.exp(2.6) - 3.6, 10.0, 10.0]
    expected_grads = [-(math.e - 1), -(math.exp(2.6) - 1), 0.0, 0.0]
    torch.testing.assert_close(values, torch.tensor(expected_values, dtype=torch.float64))
    torch.testing.assert_close(grads, torch.tensor(expected_grads, dtype=torch.float64))


def test_k3_log_ratio_clamp_bounds_the_exponent() -> None:
    logp, ref = torch.tensor([0.0]), torch.tensor([30.0])  # d = 30 is clamped to 20
    value = KL_ESTIMATORS.get("k3").fn(logp, ref, K3Params())
    assert float(value) == pytest.approx(math.exp(20.0) - 21.0, rel=1e-6)


def test_kl_loss_uses_the_chosen_clamp() -> None:
    side = TrajectorySide(
        objective=Choice("vanilla_pg"),
        aggregation=Choice("token_mean"),
        kl=Choice("k3", K3Params(coef=0.5, clamp="value")),
    )
    logp = torch.zeros(1, 1, requires_grad=True)
    inputs = TokenLossInputs(
        logp_B_T=logp,
        old_logp_B_T=torch.zeros(1, 1),
        advantages_B_T=torch.zeros(1, 1),
        mask_B_T=torch.ones(1, 1),
        sampler_logp_B_T=torch.zeros(1, 1),
        ref_logp_B_T=torch.tensor([[3.0]]),
    )
    loss, metrics = compute_token_loss(side, inputs)
    assert float(loss.detach()) == pytest.approx(0.5 * 10.0)
    assert float(metrics["trajectory/kl_ref"]) == pytest.approx(10.0)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert float(grad) == 0.0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (KLPenaltyParams(coef=0.5, estimator="k3"), -0.5 * (math.exp(3.0) - 4.0)),
        (KLPenaltyParams(coef=0.5, estimator="k3", clamp="value"), -0.5 * 10.0),
        (KLPenaltyParams(coef=0.5, estimator="abs"), -0.5 * 3.0),
    ],
)
def test_kl_penalty_passes_the_clamp_to_k3(params: KLPenaltyParams, expected: float) -> None:
    context = ShapingContext(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([1]), 10)
    context.logp_B_T, context.ref_logp_B_T = torch.tensor([[-4.0]]), torch.tensor([[-1.0]])  # d = 3
    shaped, _ = REWARD_SHAPING.get("kl_penalty").fn(torch.zeros(1, 1), context, params)
    assert float(shaped) == pytest.approx(expected)


def test_clamp_is_a_k3_parameter_only() -> None:
    spec = resolve_method(MethodChoice(preset="grpo", trajectory_side={"kl.clamp": "value", "kl.coef": 0.04}))
    assert spec.trajectory_side.kl.params == K3Params(coef=0.04, clamp="value")
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        resolve_method(MethodChoice(preset="grpo", trajectory_side={"kl": {"name": "k1", "clamp": "value"}}))
    with pytest.raises(InvalidArgument, match="log_ratio, value"):
        resolve_method(MethodChoice(preset="grpo", trajectory_side={"kl.clamp": "both"}))


def test_a_run_pinned_before_clamp_existed_keeps_the_log_ratio_clamp() -> None:
    pinned = pin_method(resolve_method(MethodChoice(preset="grpo", trajectory_side={"kl.coef": 0.04})))
    del pinned.trajectory_side["kl"]["clamp"]
    assert method_from_pinned(pinned).trajectory_side.kl.params == K3Params(coef=0.04, clamp="log_ratio")
