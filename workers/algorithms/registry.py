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
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import quote
from policyopt.workers.algorithms.params import NoParams, Params

if TYPE_CHECKING:
    from torch import Tensor, nn

    from policyopt.workers.algorithms.reward_side.common import AdvantageInputs, AdvantageResult
    from policyopt.workers.algorithms.reward_side.shaping import ShapingContext
    from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals

F = TypeVar("F", bound=Callable[..., Any])
P_contra = TypeVar("P_contra", bound=Params, contravariant=True)


# -- what a choice's function looks like, per slot (``P_contra``: the choice's own params type) --------------
class AdvantageEstimator(Protocol[P_contra]):
    """Advantages (and returns) ``[B, T]`` from shaped token rewards: ``(inputs, params) -> AdvantageResult``."""

    def __call__(self, inputs: AdvantageInputs, params: P_contra, /) -> AdvantageResult: ...


class RewardShaper(Protocol[P_contra]):
    """Token rewards ``[B, T]`` reshaped (penalties, KL in the reward), with ``reward/...`` metrics."""

    def __call__(
        self, token_rewards_B_T: Tensor, context: ShapingContext, params: P_contra, /
    ) -> tuple[Tensor, dict[str, float]]: ...


class GroupFilterFn(Protocol[P_contra]):
    """Which of ``num_groups`` groups to keep (bool ``[num_groups]``), from raw scores ``[B]``."""

    def __call__(
        self, raw_scores_B: Tensor, group_index_B: Tensor, num_groups: int, params: P_contra, /
    ) -> Tensor: ...


class CriticBuilder(Protocol[P_contra]):
    """A value head for a model of this hidden size, or None for no critic."""

    def __call__(self, model_hidden_size: int, params: P_contra, /) -> nn.Module | None: ...


class Objective(Protocol[P_contra]):
    """Per-token surrogate loss ``[B, T]`` from new/old log-probs and advantages, with per-token metrics."""

    def __call__(
        self,
        logp_B_T: Tensor,
        old_logp_B_T: Tensor,
        advantages_B_T: Tensor,
        mask_B_T: Tensor,
        params: P_contra,
        /,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


class KLEstimator(Protocol[P_contra]):
    """Per-token KL(pi_theta || pi_ref) estimate ``[B, T]`` from the two log-probs."""

    def __call__(self, logp_B_T: Tensor, ref_logp_B_T: Tensor, params: P_contra, /) -> Tensor: ...


class Aggregation(Protocol[P_contra]):
    """This micro-batch's share of the step's scalar loss, from per-token losses ``[B, T]``."""

    def __call__(
        self, loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals, params: P_contra, /
    ) -> Tensor: ...


class MismatchCorrection(Protocol[P_contra]):
    """Per-token weights ``[B, T]`` correcting sampler/trainer mismatch, with per-token metrics."""

    def __call__(
        self, old_logp_B_T: Tensor, sampler_logp_B_T: Tensor, mask_B_T: Tensor, params: P_contra, /
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


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
            raise InvalidArgument(f"unknown {self.path} {quote(name)}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[F]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# Reward side: what multiplies grad log p.
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator[Any]] = Registry("reward_side", "estimator")
REWARD_SHAPING: Registry[RewardShaper[Any]] = Registry("reward_side", "shaping")
GROUP_FILTERS: Registry[GroupFilterFn[Any]] = Registry("reward_side", "group_filter")
CRITICS: Registry[CriticBuilder[Any]] = Registry("reward_side", "critic")

# Trajectory side: how log p_theta enters the loss and how the per-token loss is aggregated.
OBJECTIVES: Registry[Objective[Any]] = Registry("trajectory_side", "objective")
KL_ESTIMATORS: Registry[KLEstimator[Any]] = Registry("trajectory_side", "kl")
AGGREGATIONS: Registry[Aggregation[Any]] = Registry("trajectory_side", "aggregation")
MISMATCH_CORRECTIONS: Registry[MismatchCorrection[Any]] = Registry("trajectory_side", "mismatch_correction")

ALL_REGISTRIES: tuple[Registry[Any], ...] = (
    ADVANTAGE_ESTIMATORS,
    REWARD_SHAPING,
    GROUP_FILTERS,
    CRITICS,
    OBJECTIVES,
    KL_ESTIMATORS,
    AGGREGATIONS,
    MISMATCH_CORRECTIONS,
)
