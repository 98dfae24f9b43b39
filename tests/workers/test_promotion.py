"""Eval metrics and the promotion rule, on hand-computed cases."""

from __future__ import annotations

import pytest

from policyopt.core.types import PromotionConfig
from policyopt.state.evals import PromotionState
from policyopt.workers.promotion import decide, eval_metrics, pass_at_k


def test_pass_at_k_is_the_unbiased_estimator_of_chen_et_al() -> None:
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=4, c=1, k=1: the success rate
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0  # k = n: any success
    with pytest.raises(ValueError):
        pass_at_k(2, 0, 3)


def test_eval_metrics_of_two_prompts() -> None:
    # prompt 1: [1, 0, 0, 1] -> mean 0.5, a success; prompt 2: [0.2, 0.2, 0.2, 0.2] -> mean 0.2, none >= 0.5
    metrics = eval_metrics([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2]], success_threshold=0.5)
    assert metrics["eval/mean"] == pytest.approx(2.8 / 8)
    assert metrics["eval/mean_at_k"] == pytest.approx((0.5 + 0.2) / 2)
    assert metrics["eval/pass_at_k"] == pytest.approx(0.5)
    assert metrics["eval/pass_at_1"] == pytest.approx((2 / 4 + 0 / 4) / 2)
    assert metrics["eval/prompts"] == 2.0


def test_beats_best_promotes_only_versions_above_the_best_promoted_plus_margin() -> None:
    rule = PromotionConfig(rule="beats_best", margin=0.1)
    state = decide(rule, 0, 0.3, PromotionState()).state  # the base: 0.3
    assert state.base == 0.3 and state.promoted == -1
    d2 = decide(rule, 2, 0.35, state)  # 0.35 <= 0.3 + 0.1
    assert not d2.promoted and d2.state.best == 0.35
    d4 = decide(rule, 4, 0.45, d2.state)  # 0.45 > 0.4
    assert d4.promoted and d4.state.promoted == 4 and d4.state.promoted_best == 0.45
    d6 = decide(rule, 6, 0.5, d4.state)  # 0.5 <= 0.45 + 0.1: the promoted best is the reference now
    assert not d6.promoted and d6.state.promoted == 4
    d8 = decide(rule, 8, 0.6, d6.state)
    assert d8.promoted and d8.state.promoted == 8


def test_threshold_and_none_rules() -> None:
    threshold = PromotionConfig(rule="threshold", threshold=0.5)
    assert decide(threshold, 1, 0.5, PromotionState()).promoted
    assert not decide(threshold, 1, 0.49, PromotionState()).promoted
    assert not decide(PromotionConfig(), 1, 99.0, PromotionState()).promoted
    assert not decide(threshold, 0, 0.9, PromotionState()).promoted  # version 0 is the baseline


def test_stop_at_metric_and_patience_give_a_reason() -> None:
    goal = PromotionConfig(rule="none", stop_at_metric=0.8)
    assert "stop_at_metric" in decide(goal, 3, 0.8, PromotionState()).stop_reason
    assert decide(goal, 3, 0.79, PromotionState()).stop_reason == ""
    patient = PromotionConfig(patience=2)
    state = decide(patient, 0, 0.5, PromotionState()).state
    first = decide(patient, 1, 0.4, state)
    assert first.stop_reason == "" and first.state.since_best == 1
    second = decide(patient, 2, 0.45, first.state)
    assert "patience 2" in second.stop_reason and "version 0" in second.stop_reason
    assert decide(patient, 2, 0.6, first.state).stop_reason == ""  # a new best resets the count
