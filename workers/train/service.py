"""Running a trainer as a process: signals, telemetry and ``/metrics`` (``settings.http_port``). ``policyopt worker train`` calls this."""

from __future__ import annotations

import signal
import threading

from policyopt.core.metrics import serve_metrics
from policyopt.core.settings import Settings
from policyopt.core.telemetry import setup_telemetry
from policyopt.workers.train.distributed import init_ranks
from policyopt.workers.train.follower import StopOrder, TrainerFollower
from policyopt.workers.train.session import build_updater, data_parallel_updaters
from policyopt.workers.train.worker import TrainerWorker


def serve_trainer(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Train until SIGTERM/SIGINT (or ``stop_event``): the current step finishes or is abandoned, then exit.

    Under torchrun (WORLD_SIZE > 1) rank 0 runs the ``TrainerWorker`` and the other ranks follow its steps
    (``follower.TrainerFollower``) until it sends ``StopOrder``; outside torchrun this is one process.
    """
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())
    ranks = init_ranks(settings.device)  # under torchrun: data-parallel ranks (distributed.py)
    if not ranks.is_leader:  # a follower ends when rank 0 sends StopOrder, whatever signals it gets
        try:
            TrainerFollower(settings, ranks).run_forever()
        finally:
            ranks.close()
        return
    setup_telemetry(settings, "policyopt-trainer")
    endpoint = serve_metrics(settings, "trainer")
    updaters = data_parallel_updaters(ranks) if ranks.is_distributed else build_updater
    try:
        TrainerWorker(
            settings, lease_ttl_ms=settings.trainer_lease_ms, updater_factory=updaters, ranks=ranks
        ).run_forever(stop)
        if ranks.is_distributed:
            ranks.broadcast_object(StopOrder())
    finally:
        if endpoint is not None:
            endpoint.close()
        ranks.close()


__all__ = ["serve_trainer"]
