"""Running a trainer as a process: signals, telemetry, lease settings. ``policyopt worker train`` calls this."""

from __future__ import annotations

import os
import signal
import threading

from policyopt.core.settings import Settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.workers.train.worker import TrainerWorker

LEASE_ENV = "POLICYOPT_TRAINER_LEASE_MS"
"""How long a trainer's run lease lives without renewal: how soon a dead trainer's runs move on (30 s)."""


def serve_trainer(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Train until SIGTERM/SIGINT (or ``stop_event``): the current step finishes or is abandoned, then exit."""
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())
    setup_telemetry(settings, "policyopt-trainer")
    lease_ms = int(os.environ.get(LEASE_ENV, "30000"))
    TrainerWorker(settings, lease_ttl_ms=lease_ms).run_forever(stop)


__all__ = ["LEASE_ENV", "serve_trainer"]
