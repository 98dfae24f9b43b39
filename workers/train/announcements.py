"""Which diagnostic warnings of a step become WARNING events: a persisting signature is announced once,
then again every ``WARNING_REPEAT_STEPS`` steps, so it does not flood WatchRun."""

from __future__ import annotations

from collections.abc import Iterable

from policyopt.core.types import EventKind, RunEvent
from policyopt.workers.algorithms import DiagnosticWarning

WARNING_REPEAT_STEPS = 10
"""A diagnostic warning seen again within this many steps is not announced again."""


class WarningAnnouncer:
    """Remembers, per run and signature, the step it was last announced at."""

    def __init__(self, repeat_steps: int = WARNING_REPEAT_STEPS) -> None:
        self.repeat_steps = repeat_steps
        self._last: dict[str, dict[str, int]] = {}  # run -> warning name -> version last announced

    def events(
        self, run_id: str, version: int, warnings: Iterable[DiagnosticWarning], extra: Iterable[str] = ()
    ) -> list[RunEvent]:
        """WARNING events for version ``version``: the warnings due for announcement, then ``extra``."""
        last = self._last.setdefault(run_id, {})
        messages = []
        for warning in warnings:
            if version - last.get(warning.name, -self.repeat_steps) >= self.repeat_steps:
                last[warning.name] = version
                messages.append(str(warning))
        messages += list(extra)
        return [
            RunEvent(run_id=run_id, kind=EventKind.WARNING, message=m, step=version, version=version)
            for m in messages
        ]

    def forget(self, run_id: str) -> None:
        self._last.pop(run_id, None)


__all__ = ["WARNING_REPEAT_STEPS", "WarningAnnouncer"]
