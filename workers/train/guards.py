"""Checks around a run's update: whether it may go on (``step_gate``) and whether it left the policy sane
(``non_finite``), so a cancelled run frees the trainer and a diverged update is never published."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable

import redis
import torch

from policyopt.core.errors import PolicyOptError
from policyopt.core.types import RunStatus
from policyopt.state.runs import RunStore
from policyopt.workers.train.lease import LeaseKeeper
from policyopt.workers.train.session import RunSession

STATUS_CHECK_S = 0.25
"""How often a step in progress asks Redis whether its run is still RUNNING (CancelRun)."""


def step_gate(run_id: str, stop: threading.Event, leases: LeaseKeeper, runs: RunStore) -> Callable[[], bool]:
    """``should_continue`` for a step of ``run_id``: the trainer runs, holds the lease, the run is RUNNING."""
    checked = {"at": time.monotonic(), "running": True}

    def should_continue() -> bool:
        if stop.is_set() or not leases.holds(run_id):
            return False
        if time.monotonic() - checked["at"] >= STATUS_CHECK_S:
            checked["at"] = time.monotonic()
            with contextlib.suppress(redis.RedisError, PolicyOptError):  # unknown: keep going
                checked["running"] = runs.get_run(run_id).status == RunStatus.RUNNING
        return bool(checked["running"])

    return should_continue


def non_finite(session: RunSession, metrics: dict[str, float]) -> str:
    """What an update left non-finite (loss, gradient norm, LoRA or critic weights), or ''."""
    for key in ("trajectory/loss", "trajectory/grad_norm", "trajectory/value_loss"):
        if key in metrics and not math.isfinite(metrics[key]):
            return key
    tensors = list(session.adapter_parameters())
    critic = session.updater.critic
    if critic is not None:
        tensors += list(critic.parameters())
    with torch.no_grad():
        if any(not bool(torch.isfinite(t).all()) for t in tensors):
            return "the adapter weights"
    return ""


__all__ = ["STATUS_CHECK_S", "non_finite", "step_gate"]
