"""Step metrics and compound-failure detectors."""

from __future__ import annotations

import pytest
import torch

from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import detect_failures, resolve_method
from policyopt.workers.algorithms.diagnostics import TokenMetricAccumulator, length_metrics, reward_metrics


def names(metrics: dict[str, float], preset: str = "grpo") -> list[str]:
    return [w.name for w in detect_failures(metrics, resolve_method(MethodChoice(preset=preset)))]


def test_reward_metrics_count_zero_variance_and_near_uniform_groups() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.50, 0.51, 0.0, 1.0])
    metrics = reward_metrics(scores, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 4)
    assert metrics["reward/zero_variance_group_fraction"] == pytest.approx(0.25)
    assert metrics["reward/near_uniform_group_fraction"] == pytest.approx(0.25)
    assert metrics["reward/mean"] == pytest.approx(float(scores.mean()))


def test_length_metrics_split_by_advantage_sign() -> None:
    metrics = length_metrics(torch.tensor([10, 20, 30]), torch.tensor([1.0, -1.0, -2.0]))
    assert metrics["reward/positive_advantage_length_mean"] == 10
    assert metrics["reward/negative_advantage_length_mean"] == 25
    assert metrics["trajectory/response_length_max"] == 30


def test_token_metric_accumulator_weights_tokens_across_micro_batches() -> None:
    accumulator = TokenMetricAccumulator()
    accumulator.add(
        {"trajectory/x": torch.tensor([[1.0, 3.0]]), "trajectory/ratio_max": torch.tensor([[1.0, 9.0]])},
        torch.tensor([[1.0, 0.0]]),
    )
    accumulator.add(
        {"trajectory/x": torch.tensor([[5.0, 7.0]]), "trajectory/ratio_max": torch.tensor([[2.0, 3.0]])},
        torch.ones(1, 2),
    )
    result = accumulator.result()
    assert result["trajectory/x"] == pytest.approx((1 + 5 + 7) / 3)
    assert result["trajectory/ratio_max"] == 3.0  # the masked 9 is ignored


def test_length_bias_detector_needs_length_normalization_and_growth() -> None:
    metrics = {
        "reward/negative_advantage_length_mean": 300.0,
        "reward/positive_advantage_length_mean": 100.0,
        "trajectory/response_length_growth": 12.0,
    }
    assert "length_normalized_negative_advantages_grow" in names(metrics, "grpo")
    assert "length_normalized_negative_advantages_grow" not in names(metrics, "dapo")  # token_mean
    assert "length_normalized_negative_advantages_grow" not in names(
        metrics | {"trajectory/response_length_growth": -1.0}
    )
    noise = {  # a fraction of a token either way is not a trend
        "reward/negative_advantage_length_mean": 9.3,
        "reward/positive_advantage_length_mean": 9.1,
        "trajectory/response_length_growth": 0.04,
    }
    assert "length_normalized_negative_advantages_grow" not in names(noise, "grpo")


def test_std_amplification_detector() -> None:
    metrics = {"reward/std_amplification_max": 100.0, "reward/near_uniform_group_fraction": 0.5}
    warnings = detect_failures(metrics, resolve_method(MethodChoice(preset="grpo")))
    assert [(w.name, w.axis) for w in warnings] == [("std_normalization_amplifies_noise", "reward_side")]
    assert "scale" in warnings[0].suggestion
    assert names({"reward/std_amplification_max": 100.0, "reward/near_uniform_group_fraction": 0.1}) == []


def test_inactive_clipping_detector_is_silenced_by_a_correction() -> None:
    metrics = {
        "trajectory/mismatch_kl": 0.05,
        "trajectory/clip_fraction_low": 0.0,
        "trajectory/mismatch_weight_mean": 1.0,
    }
    assert names(metrics, "dr_grpo") == ["stale_or_mismatched_samples_clipping_inactive"]
    assert names(metrics | {"trajectory/mismatch_weight_mean": 0.9}, "dr_grpo") == []
    assert names(metrics | {"trajectory/clip_fraction_high": 0.05}, "dr_grpo") == []
    assert names(metrics, "grpo") == []  # its token_tis corrects, even where every weight is 1


def test_zero_variance_and_entropy_detectors() -> None:
    assert names({"reward/zero_variance_group_fraction": 0.75}) == ["mostly_zero_variance_groups"]
    assert names({"trajectory/entropy": 0.01}) == ["entropy_collapse"]
    assert names({"reward/zero_variance_group_fraction": 0.25, "trajectory/entropy": 1.0}) == []
