"""A data-parallel trainer rank other than 0: repeats rank 0's steps on its shard and never writes anything.

Rank 0 (``TrainerWorker``) broadcasts a ``StepOrder`` (the run, the version the step starts from, the
groups) before each update and a ``StopOrder`` when it exits. The follower keeps its own sessions: one
whose version is the order's has the same weights and optimizer state as rank 0's (same seed, same
updates); any other is reloaded from the adapter store and checkpoints rank 0 wrote for that version
(read only, so the ranks share a filesystem: one node, or a shared ``adapter_root`` and ``data_dir``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from policyopt.core.outbound import OutboundPolicy
from policyopt.core.settings import Settings
from policyopt.core.types import Run, TrajectoryGroup
from policyopt.models import ModelCatalog
from policyopt.state import LocalAdapterStore
from policyopt.workers.placement import configure_threads, release_free_memory, resolve_placement
from policyopt.workers.train.base_pool import BasePool
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.distributed import Ranks
from policyopt.workers.train.session import RunSession, UpdaterFactory, data_parallel_updaters, load_session
from policyopt.workers.train.session_cache import SessionCache
from policyopt.workers.train.update import StepAbandoned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOrder:
    """Rank 0 is about to update ``run`` from ``version`` on ``groups``: every rank joins the update."""

    run: Run
    version: int
    groups: list[TrajectoryGroup]


@dataclass(frozen=True)
class StopOrder:
    """Rank 0 is exiting: so do the followers."""


class TrainerFollower:
    """Runs the ``StepOrder``s rank 0 broadcasts until a ``StopOrder``."""

    def __init__(self, settings: Settings, ranks: Ranks, updater_factory: UpdaterFactory | None = None):
        self.ranks = ranks
        self.placement = ranks.place(resolve_placement(settings.device, settings.dtype))
        self.models = ModelCatalog.from_settings(settings)
        self.outbound = OutboundPolicy.from_settings(settings)
        self.store = LocalAdapterStore(settings.adapter_root)
        self.checkpoints = CheckpointStore(Path(settings.data_dir) / "checkpoints")
        self.pool = BasePool(self.placement, self.models)
        self.sessions = SessionCache(self.pool, int(settings.trainer_memory_mb * 2**20))
        self.updater_factory = updater_factory or data_parallel_updaters(ranks)
        configure_threads(settings.torch_threads)
        log.info("trainer rank %d of %d on %s", ranks.rank, ranks.world_size, self.placement.device)

    def run_forever(self) -> None:
        """Follow rank 0 until it stops."""
        try:
            while True:
                order: StepOrder | StopOrder = self.ranks.broadcast_object(None)
                if isinstance(order, StopOrder):
                    log.info("trainer rank %d: rank 0 stopped, so does this rank", self.ranks.rank)
                    return
                assert isinstance(order, StepOrder), f"unexpected order {order!r}"
                self.step(order)
        finally:
            for run_id in list(self.sessions):
                self.sessions.drop(run_id)

    def step(self, order: StepOrder) -> None:
        """Join rank 0's update; an abandoned (or failed) update drops the session, as rank 0 does."""
        run_id = order.run.run_id
        session = self._session(order.run, order.version)
        session.activate()
        try:
            session.updater.step(order.groups)
        except StepAbandoned:
            log.info("run %s: step from version %d abandoned by rank 0", run_id, order.version)
            self.sessions.drop(run_id)
            return
        except BaseException:
            self.sessions.drop(run_id)
            raise
        session.version = order.version + 1
        session.release_gradients()
        release_free_memory(self.placement.device)
        self.sessions.touch(run_id)
        self.sessions.evict_over_budget(keep=run_id)

    def _session(self, run: Run, version: int) -> RunSession:
        """The run's session at ``version``: the one in memory if it got there, else reloaded from disk."""
        session = self.sessions.get(run.run_id)
        if session is not None and session.version == version:
            return session
        self.sessions.drop(run.run_id)
        session = load_session(
            run,
            version,
            pool=self.pool,
            placement=self.placement,
            store=self.store,
            checkpoints=self.checkpoints,
            models=self.models,
            outbound=self.outbound,
            updater_factory=self.updater_factory,
        )
        self.sessions.add(session)
        self.sessions.evict_over_budget(keep=run.run_id)
        return session


__all__ = ["StepOrder", "StopOrder", "TrainerFollower"]
