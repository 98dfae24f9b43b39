"""A method is a ``RewardSide`` choice and a ``TrajectorySide`` choice (the two axes).

Each slot holds a ``Choice``: a registry key plus that choice's frozen params. Slot fields declare their
registry in the field metadata, so overriding, validating and listing walk the dataclass fields and never
branch on names. Plain fields (``entropy_coef``, ``epochs``, ...) carry a doc instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from policyopt.workers.algorithms.params import NoParams, Params, params_to_dict
from policyopt.workers.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    CRITICS,
    GROUP_FILTERS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    OBJECTIVES,
    REWARD_SHAPING,
    Entry,
    Registry,
)

# Needs the trainer satisfies itself; any other need must be provided by a choice (``values`` by a critic).
TRAINER_PROVIDED = frozenset({"reference", "greedy_baseline", "teacher"})


@dataclass(frozen=True)
class Choice:
    """A registry key and its params."""

    name: str
    params: Params = field(default_factory=NoParams)

    def describe(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in params_to_dict(self.params).items())
        return f"{self.name}({values})" if values else self.name


def slot(registry: Registry[Any], default: Choice | None = None) -> Any:
    """A field holding one Choice from ``registry``."""
    if default is None:
        return field(metadata={"registry": registry})
    return field(default=default, metadata={"registry": registry})


def list_slot(registry: Registry[Any]) -> Any:
    """A field holding a tuple of Choices from ``registry``, applied in order."""
    return field(default=(), metadata={"registry": registry, "many": True})


def setting(default: Any, doc: str) -> Any:
    """A plain field of an axis, with the reason to change it."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RewardSide:
    """What multiplies grad log p: shaped token rewards -> advantages (B x T)."""

    estimator: Choice = slot(ADVANTAGE_ESTIMATORS)
    shaping: tuple[Choice, ...] = list_slot(REWARD_SHAPING)
    group_filter: Choice = slot(GROUP_FILTERS, Choice("none"))
    critic: Choice = slot(CRITICS, Choice("none"))


@dataclass(frozen=True)
class TrajectorySide:
    """How log p_theta enters the loss, and how the per-token loss becomes one scalar."""

    objective: Choice = slot(OBJECTIVES)
    aggregation: Choice = slot(AGGREGATIONS)
    kl: Choice = slot(KL_ESTIMATORS)
    mismatch_correction: Choice = slot(MISMATCH_CORRECTIONS, Choice("none"))
    entropy_coef: float = setting(0.0, "Entropy bonus weight; raise it (1e-3) when entropy collapses early.")
    epochs: int = setting(
        1, "Passes over each batch (PPO reuse); more extracts more per sample, risks drift."
    )
    mini_batches: int = setting(1, "Optimizer steps per epoch; each sees 1/mini_batches of the sequences.")

    def validate(self) -> list[str]:
        problems = [] if self.entropy_coef >= 0 else ["entropy_coef must be >= 0"]
        problems += [] if self.epochs >= 1 else ["epochs must be >= 1"]
        return problems + ([] if self.mini_batches >= 1 else ["mini_batches must be >= 1"])


@dataclass(frozen=True)
class GroupFilter:
    """DAPO dynamic sampling, as the rollout side needs it: keep a group only if ``keep`` says so (on the
    RAW scores), and sample up to ``max_extra_rounds`` more rounds to refill the batch."""

    name: str
    params: Params
    max_extra_rounds: int

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def keep(self, raw_rewards: Sequence[float]) -> bool:
        """Whether one group's raw rewards carry a learning signal under this filter."""
        scores_B = torch.tensor(list(raw_rewards), dtype=torch.float64)
        groups_B = torch.zeros(len(scores_B), dtype=torch.long)
        return bool(GROUP_FILTERS.get(self.name).fn(scores_B, groups_B, 1, self.params)[0])


def iter_choices(side: RewardSide | TrajectorySide) -> Iterator[tuple[str, Registry[Any], Choice]]:
    """(field name, registry, choice) for every choice in ``side``, list slots expanded."""
    for f in dataclasses.fields(side):
        registry = f.metadata.get("registry")
        if registry is None:
            continue
        value = getattr(side, f.name)
        for choice in value if f.metadata.get("many") else (value,):
            yield f.name, registry, choice


@dataclass(frozen=True)
class MethodSpec:
    """A resolved, validated method: the preset it started from and both axes."""

    name: str
    reward_side: RewardSide
    trajectory_side: TrajectorySide

    def entries(self) -> Iterator[tuple[str, Entry[Any], Choice]]:
        for side in (self.reward_side, self.trajectory_side):
            for _, registry, choice in iter_choices(side):
                yield registry.path, registry.get(choice.name), choice

    @property
    def needs(self) -> frozenset[str]:
        """Inputs the trainer must supply or a choice must provide."""
        needs: set[str] = set()
        for _, entry, choice in self.entries():
            needs |= entry.needs | choice.params.needs()
        return frozenset(needs)

    @property
    def provides(self) -> frozenset[str]:
        return frozenset().union(*(entry.provides for _, entry, _ in self.entries()))

    @property
    def needs_critic(self) -> bool:
        return "values" in self.needs

    @property
    def needs_reference(self) -> bool:
        return "reference" in self.needs

    @property
    def needs_greedy_baseline(self) -> bool:
        return "greedy_baseline" in self.needs

    @property
    def uses_task_reward(self) -> bool:
        """False when the estimator ignores the reward endpoint's scores (pure OPD: ``task_coef`` 0)."""
        return float(getattr(self.reward_side.estimator.params, "task_coef", 1.0)) != 0.0

    @property
    def group_filter(self) -> GroupFilter:
        choice = self.reward_side.group_filter
        rounds = getattr(choice.params, "max_extra_rounds", 0)
        return GroupFilter(choice.name, choice.params, int(rounds))

    def describe(self) -> str:
        """One line naming every choice with its params."""
        parts = [f"{path}={choice.describe()}" for path, _, choice in self.entries()]
        side = self.trajectory_side
        parts.append(
            f"entropy_coef={side.entropy_coef} epochs={side.epochs} mini_batches={side.mini_batches}"
        )
        return f"{self.name}: " + " ".join(parts)
