"""Running a trainer as a process: signals and telemetry. ``policyopt worker train`` calls this."""

from __future__ import annotations

import signal
import threading

from policyopt.core.settings import Settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.workers.train.worker import TrainerWorker


def serve_trainer(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Train until SIGTERM/SIGINT (or ``stop_event``): the current step finishes or is abandoned, then exit."""
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())
    setup_telemetry(settings, "policyopt-trainer")
    TrainerWorker(settings, lease_ttl_ms=settings.trainer_lease_ms).run_forever(stop)


__all__ = ["serve_trainer"]
