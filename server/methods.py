"""What the server needs of the method library: resolve and pin a run's method, and list the choices.

The server's only import from ``policyopt.workers`` (the pure-torch ``algorithms`` package), made on first
use because it pulls in torch; ``MethodSpec`` is imported for type checking only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from policyopt.core.types import MethodChoice, ResolvedMethod, RunConfig

if TYPE_CHECKING:
    from policyopt.workers.algorithms import ChoiceInfo, MethodSpec, PresetInfo


def resolve(choice: MethodChoice) -> MethodSpec:
    """Preset + overrides -> a validated method; InvalidArgument says what to fix."""
    from policyopt.workers.algorithms import resolve_method

    return resolve_method(choice)


def with_teacher_coef(spec: MethodSpec, coef: float) -> MethodSpec:
    """The resolved method with the run's ``teacher.coef`` (lambda) as its estimator's ``coef``."""
    from policyopt.workers.algorithms import override_method

    return override_method(spec, {"estimator.coef": coef})


def pin(spec: MethodSpec) -> ResolvedMethod:
    """Every field of both axes, as the run stores it (see ``ResolvedMethod``)."""
    from policyopt.workers.algorithms import pin_method

    return pin_method(spec)


def of_run(config: RunConfig) -> MethodSpec:
    """The method a run trains with: its pinned method."""
    from policyopt.workers.algorithms import run_method

    return run_method(config)


def counts(spec: MethodSpec) -> dict[str, int]:
    """The method's counts the server bounds (``bounds.METHOD_RANGES``), keyed as a tenant overrides them."""
    return {
        "trajectory_side.epochs": spec.trajectory_side.epochs,
        "trajectory_side.mini_batches": spec.trajectory_side.mini_batches,
        "reward_side.group_filter.max_extra_rounds": spec.group_filter.max_extra_rounds,
    }


def catalog() -> tuple[list[ChoiceInfo], list[PresetInfo]]:
    """Every choice on each axis and every preset, for ListMethods."""
    from policyopt.workers.algorithms import list_methods

    return list_methods()


__all__ = ["catalog", "counts", "of_run", "pin", "resolve", "with_teacher_coef"]
