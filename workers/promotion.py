"""Eval metrics and the promotion rule: pure functions over rewards and a run's ``PromotionState``.

Metrics of one evaluation (``eval_metrics``), over P prompts with n completions each:
- ``eval/mean``: mean reward over all P * n completions;
- ``eval/mean_at_k``: mean over prompts of each prompt's mean reward (k = n);
- ``eval/pass_at_k``: mean over prompts of the unbiased pass@k of Chen et al. 2021 ("Evaluating Large
  Language Models Trained on Code"), ``1 - C(n - c, k) / C(n, k)`` with c the completions whose reward is
  ``>= success_threshold``; k = n here, so it is the share of prompts with at least one success;
- ``eval/pass_at_1``: the same estimator at k = 1 (c / n per prompt), the success rate of one completion;
- ``eval/prompts``: P.

Rules (``PromotionConfig.rule``): ``none`` promotes nothing; ``beats_best`` promotes a version whose eval
mean exceeds the best promoted version's (the base's, version 0, while none is promoted) by more than
``margin``; ``threshold`` promotes a version whose eval mean is ``>= threshold``. Version 0 is the baseline
and is never promoted. ``stop_at_metric`` and ``patience`` give a reason to end the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from policyopt.core.types import PromotionConfig
from policyopt.state.evals import PromotionDecision, PromotionState


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` succeeded: ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def eval_metrics(rewards_P_N: Sequence[Sequence[float]], success_threshold: float) -> dict[str, float]:
    """The EVAL metrics (module docstring) of P prompts' rewards, n per prompt."""
    scored = [list(r) for r in rewards_P_N if r]
    if not scored:
        return {"eval/mean": 0.0, "eval/mean_at_k": 0.0, "eval/pass_at_k": 0.0, "eval/pass_at_1": 0.0,
                "eval/prompts": 0.0}  # fmt: skip
    flat = [x for r in scored for x in r]
    per_prompt = [sum(r) / len(r) for r in scored]
    successes = [(len(r), sum(x >= success_threshold for x in r)) for r in scored]
    passes = [pass_at_k(n, c, n) for n, c in successes]
    singles = [pass_at_k(n, c, 1) for n, c in successes]
    return {
        "eval/mean": sum(flat) / len(flat),
        "eval/mean_at_k": sum(per_prompt) / len(per_prompt),
        "eval/pass_at_k": sum(passes) / len(passes),
        "eval/pass_at_1": sum(singles) / len(singles),
        "eval/prompts": float(len(scored)),
    }


def _promotes(config: PromotionConfig, mean: float, state: PromotionState) -> bool:
    if config.rule == "beats_best":
        reference = state.promoted_best if state.promoted_best is not None else state.base
        return reference is None or mean > reference + config.margin
    if config.rule == "threshold":
        return mean >= config.threshold
    return False


def decide(config: PromotionConfig, version: int, mean: float, state: PromotionState) -> PromotionDecision:
    """Apply the run's promotion rule and stop conditions to version ``version``'s eval mean."""
    if version == 0:
        state = replace(state, base=mean, best=mean, best_version=0, since_best=0)
        return PromotionDecision(state, promoted=False, stop_reason=_stop_reason(config, mean, state))
    new_best = state.best is None or mean > state.best
    state = replace(
        state,
        best=mean if new_best else state.best,
        best_version=version if new_best else state.best_version,
        since_best=0 if new_best else state.since_best + 1,
    )
    promoted = _promotes(config, mean, state)
    if promoted:
        best_promoted = mean if state.promoted_best is None else max(mean, state.promoted_best)
        state = replace(state, promoted=version, promoted_best=best_promoted)
    return PromotionDecision(state, promoted=promoted, stop_reason=_stop_reason(config, mean, state))


def _stop_reason(config: PromotionConfig, mean: float, state: PromotionState) -> str:
    if config.stop_at_metric is not None and mean >= config.stop_at_metric:
        return f"eval mean {mean:.4g} reached stop_at_metric {config.stop_at_metric:g}"
    if config.patience > 0 and state.since_best >= config.patience:
        return (
            f"no new best eval mean in {state.since_best} evaluations (patience {config.patience}; best "
            f"{state.best:.4g} at version {state.best_version})"
        )
    return ""


__all__ = ["decide", "eval_metrics", "pass_at_k"]
