"""Named reward components in a ``ScoreResponse``: checked, and combined into one total per completion.

A RewardService may answer with ``scores`` (the totals), with ``components`` (one value per completion
each) and ``weights`` (missing: 1.0), or both. Without scores the total is ``sum(weight * value)``; with
both, the scores are the totals and the components are kept for reading. Everything here comes from a
tenant's endpoint, so a bad answer becomes a permanent ``RewardEndpointError`` with a message written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policyopt.core.errors import RewardEndpointError
from policyopt.core.identifiers import COMPONENT_NAME_RULE, is_component_name, quote
from policyopt.core.types import MAX_REWARD_COMPONENTS


@dataclass(frozen=True)
class ScoredGroup:
    """One group's totals and, per completion, its named components (empty dicts when none were given)."""

    totals: list[float]
    components: list[dict[str, float]] = field(default_factory=list)


def combine(
    endpoint: str,
    scores: Sequence[float],
    components: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    expected: int,
) -> ScoredGroup:
    """The group's totals and components, checked; RewardEndpointError (permanent) when unusable."""
    _check_names(endpoint, components, weights)
    for name, values in components.items():
        _check_values(endpoint, f"component {name!r}", values, expected)
    _check_values(endpoint, "weights", list(weights.values()), len(weights))
    if scores or not components:
        totals = _check_values(endpoint, "scores", scores, expected)
    else:
        totals = [
            sum(weights.get(name, 1.0) * values[i] for name, values in components.items())
            for i in range(expected)
        ]
        _check_values(endpoint, "weighted totals", totals, expected)
    per_completion = [
        {name: float(values[i]) for name, values in components.items()} for i in range(expected)
    ]
    return ScoredGroup(totals=totals, components=per_completion)


def _check_names(
    endpoint: str, components: Mapping[str, Sequence[float]], weights: Mapping[str, float]
) -> None:
    if len(components) > MAX_REWARD_COMPONENTS:
        raise RewardEndpointError(
            f"reward endpoint {endpoint!r} returned {len(components)} reward components; "
            f"return at most {MAX_REWARD_COMPONENTS}"
        )
    for name in [*components, *weights]:
        if not is_component_name(name):
            raise RewardEndpointError(
                f"reward endpoint {endpoint!r} returned a reward component named {quote(name)}; "
                f"name components with {COMPONENT_NAME_RULE}"
            )
    unknown = sorted(set(weights) - set(components))
    if unknown:
        raise RewardEndpointError(
            f"reward endpoint {endpoint!r} returned weights for components it did not return "
            f"({', '.join(unknown[:5])}); weigh only the components in the response"
        )


def _check_values(endpoint: str, what: str, values: Sequence[float], expected: int) -> list[float]:
    if len(values) != expected:
        raise RewardEndpointError(
            f"reward endpoint {endpoint!r} returned {len(values)} {what} for {expected} completions; "
            "Score must return exactly one score per completion, in order"
        )
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        shown = ", ".join(f"#{i}={values[i]}" for i in bad[:5])
        raise RewardEndpointError(
            f"reward endpoint {endpoint!r} returned non-finite {what} ({shown}); "
            "return a finite float for every completion (map failures to a low score, not NaN or inf)"
        )
    return [float(v) for v in values]


__all__ = ["ScoredGroup", "combine"]
