"""Fault injection for the trainer's crash and timing tests, off unless the test sets its variable.

``POLICYOPT_TEST_STEP_DELAY_S`` sleeps inside a step after the update; ``POLICYOPT_TEST_CRASH_AT``
(``after_checkpoint:N`` or ``after_publish:N``) SIGKILLs the trainer at that point of version N's step.
"""

from __future__ import annotations

import os
import signal
import time


def pause_for_test() -> None:
    """Sleep ``POLICYOPT_TEST_STEP_DELAY_S`` after the update, before anything is durable."""
    delay = float(os.environ.get("POLICYOPT_TEST_STEP_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def crash_for_test(point: str, version: int) -> None:
    """SIGKILL this process when ``POLICYOPT_TEST_CRASH_AT`` names this point and version."""
    if os.environ.get("POLICYOPT_TEST_CRASH_AT") == f"{point}:{version}":
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["crash_for_test", "pause_for_test"]
