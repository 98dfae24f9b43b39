"""Running a rollout worker as a process: signals, telemetry and ``/metrics`` (``settings.http_port``). ``policyopt worker rollout`` calls this."""

from __future__ import annotations

import signal
import threading

from policyopt.core.metrics import serve_metrics
from policyopt.core.settings import Settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.workers.rollout.worker import RolloutWorker


def serve_rollout(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Roll out until SIGTERM/SIGINT (or ``stop_event``): the prompts in hand finish (groups queued, prompts
    acked), then return."""
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())
    setup_telemetry(settings, "policyopt-rollout")
    endpoint = serve_metrics(settings, "rollout")
    try:
        worker = RolloutWorker(settings)
        try:
            worker.run_forever(stop)
        finally:
            worker.close()
    finally:
        if endpoint is not None:
            endpoint.close()


__all__ = ["serve_rollout"]
