"""What the trainer reads from a method spec: its group filter and its diagnostic warnings.

Also the test-only hooks the crash tests use to stop a trainer at a chosen point of a step.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from policyopt.core.types import TrajectoryGroup
from policyopt.workers.algorithms import DiagnosticWarning, MethodSpec, detect_failures
from policyopt.workers.train.collect import has_zero_variance

KeepGroup = Callable[[TrajectoryGroup], bool]


def group_filter_of(spec: object, prompts_per_step: int) -> tuple[KeepGroup | None, int | None]:
    """(keep predicate on raw scores, max groups examined per step), or (None, None) without a filter.

    DAPO dynamic sampling: a dropped group is replaced by reading more, for up to
    ``max_extra_rounds`` extra batches' worth of groups; then a short batch trains.
    """
    group_filter = getattr(spec, "group_filter", None)
    if group_filter is None or not getattr(group_filter, "enabled", True):
        return None, None
    max_examined = (1 + int(getattr(group_filter, "max_extra_rounds", 0))) * prompts_per_step
    keep_rewards = getattr(group_filter, "keep", None)
    if keep_rewards is None:
        return (lambda group: not has_zero_variance(group)), max_examined

    def keep(group: TrajectoryGroup) -> bool:
        return bool(keep_rewards([t.reward for t in group.trajectories]))

    return keep, max_examined


def diagnostic_warnings(updater: object, spec: object, metrics: dict[str, float]) -> list[DiagnosticWarning]:
    """Compound-failure warnings of the last step: the updater's own, else the diagnostics detectors'."""
    warnings = getattr(updater, "last_warnings", None)
    if warnings is None:
        warnings = detect_failures(metrics, spec) if isinstance(spec, MethodSpec) else []
    return list(warnings)


def pause_for_test() -> None:
    """Test hook: ``POLICYOPT_TEST_STEP_DELAY_S`` sleeps after the update, before anything is durable."""
    delay = float(os.environ.get("POLICYOPT_TEST_STEP_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def crash_for_test(point: str, version: int) -> None:
    """Test hook: ``POLICYOPT_TEST_CRASH_AT=after_publish:2`` SIGKILLs this process at that point."""
    if os.environ.get("POLICYOPT_TEST_CRASH_AT") == f"{point}:{version}":
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["KeepGroup", "crash_for_test", "diagnostic_warnings", "group_filter_of", "pause_for_test"]
