"""Registries of named choices on each axis, filled by decorators where each choice is defined.

Every slot of a method (the advantage estimator, the objective, the aggregation, ...) is a ``Registry``.
A choice registers its function, its params dataclass and a one-line rationale::

    @ADVANTAGE_ESTIMATORS.register("grpo", params=GRPOParams, rationale="...")
    def compute_grpo_advantages(inputs, params): ...

Lookups of an unknown name raise ``InvalidArgument`` listing the known names, so callers never branch
on names themselves.

``needs`` are inputs the trainer must supply (``reference``: log-probs with the adapter disabled,
``greedy_baseline``: a greedy rollout's reward per prompt, ``values``: a critic). ``provides`` says a
choice supplies one of them (the ``value_head`` critic provides ``values``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from policyopt.core.errors import InvalidArgument
from policyopt.workers.algorithms.params import NoParams, Params

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered choice."""

    name: str
    fn: F
    params_type: type[Params]
    rationale: str
    needs: frozenset[str]
    provides: frozenset[str]
    attributes: frozenset[str]  # facts diagnostics may read, e.g. ``length_normalized``


class Registry(Generic[F]):
    """Name -> Entry for one slot (``axis.slot``, e.g. ``reward_side.estimator``)."""

    def __init__(self, axis: str, slot: str) -> None:
        self.axis = axis
        self.slot = slot
        self._entries: dict[str, Entry[F]] = {}

    @property
    def path(self) -> str:
        return f"{self.axis}.{self.slot}"

    def register(
        self,
        name: str,
        *,
        rationale: str,
        params: type[Params] = NoParams,
        needs: tuple[str, ...] = (),
        provides: tuple[str, ...] = (),
        attributes: tuple[str, ...] = (),
    ) -> Callable[[F], F]:
        """Decorator: register ``fn`` under ``name``. Registering a name twice is a programming error."""

        def decorate(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.path} {name!r} is registered twice")
            self._entries[name] = Entry(
                name, fn, params, rationale, frozenset(needs), frozenset(provides), frozenset(attributes)
            )
            return fn

        return decorate

    def get(self, name: str) -> Entry[F]:
        """The entry for ``name``; an unknown name raises InvalidArgument listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise InvalidArgument(f"unknown {self.path} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[F]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# Reward side: what multiplies grad log p.
ADVANTAGE_ESTIMATORS: Registry[Callable[..., Any]] = Registry("reward_side", "estimator")
REWARD_SHAPING: Registry[Callable[..., Any]] = Registry("reward_side", "shaping")
GROUP_FILTERS: Registry[Callable[..., Any]] = Registry("reward_side", "group_filter")
CRITICS: Registry[Callable[..., Any]] = Registry("reward_side", "critic")

# Trajectory side: how log p_theta enters the loss and how the per-token loss is aggregated.
OBJECTIVES: Registry[Callable[..., Any]] = Registry("trajectory_side", "objective")
KL_ESTIMATORS: Registry[Callable[..., Any]] = Registry("trajectory_side", "kl")
AGGREGATIONS: Registry[Callable[..., Any]] = Registry("trajectory_side", "aggregation")
MISMATCH_CORRECTIONS: Registry[Callable[..., Any]] = Registry("trajectory_side", "mismatch_correction")

ALL_REGISTRIES: tuple[Registry[Callable[..., Any]], ...] = (
    ADVANTAGE_ESTIMATORS,
    REWARD_SHAPING,
    GROUP_FILTERS,
    CRITICS,
    OBJECTIVES,
    KL_ESTIMATORS,
    AGGREGATIONS,
    MISMATCH_CORRECTIONS,
)
