"""``python -m policyopt.workers.rollout``: one rollout worker, configured from the environment.

Reads REDIS_URL, POLICYOPT_DATA_DIR, POLICYOPT_TORCH_THREADS and the other settings (see README).
SIGTERM or SIGINT lets the prompt in hand finish (its group is queued and the prompt acked), then exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading

from policyopt.core.settings import Settings, load_settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.workers.rollout.worker import RolloutWorker


def serve_rollout(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Run a rollout worker until SIGTERM/SIGINT (or ``stop_event``); what ``policyopt worker rollout`` calls."""
    stop = stop_event or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    setup_telemetry(settings, "policyopt-rollout")
    worker = RolloutWorker(settings)
    try:
        worker.run_forever(stop)
    finally:
        worker.close()


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_rollout(settings)


if __name__ == "__main__":
    main()
