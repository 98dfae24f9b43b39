"""The trainer worker: turns a run's queued trajectory groups into consecutive LoRA adapter versions.

For each active run it can lease, one step is: collect ``prompts_per_step`` groups (they stay
pending), then ``step.StepTrainer.train``: ``PolicyUpdater.step``, checkpoint the trainer state as vN,
publish adapter vN (atomic directory rename), then ``RunStore.commit_step`` (index + ack + events in
one MULTI, guarded by the lease). ``recovery.reconcile_run`` finishes an interrupted commit when a
trainer takes a run over. This module is the scheduling loop, the sessions and leases; step.py is the step.

Many runs share one trainer: each pass finds the runs with enough queued groups (XLEN, no model
needed) and trains the one that has had the least trainer time (``scheduler.FairScheduler``). Runs on
the same base model share it as named adapters (``base_pool``); sessions beyond the memory budget are
evicted least recently trained first (``session_cache``). A run's failures stay with it: a config that
cannot load fails the run, other failures back the run off exponentially, a non-finite update fails it
without publishing, and a cancelled run's step is abandoned between optimizer steps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import redis

from policyopt.core.errors import InvalidArgument, NotFound, PermissionDenied, PolicyOptError
from policyopt.core.metrics import TRAINER_RUNS, forget_inactive_runs, redis_error
from policyopt.core.outbound import OutboundPolicy
from policyopt.core.settings import Settings
from policyopt.core.types import RunStatus, TrajectoryGroup
from policyopt.models import ModelCatalog
from policyopt.state import AdapterStore, LocalAdapterStore, RunStore, WorkQueue, connect, consumer_name
from policyopt.workers.placement import configure_threads, release_free_memory, resolve_placement
from policyopt.workers.train.base_pool import BasePool
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.collect import collect_groups, group_filter_of
from policyopt.workers.train.distributed import SINGLE, Ranks
from policyopt.workers.train.lease import LeaseKeeper
from policyopt.workers.train.readiness import ReadyRuns
from policyopt.workers.train.recovery import reconcile_run
from policyopt.workers.train.scheduler import FairScheduler, retry_delay
from policyopt.workers.train.session import RunSession, UpdaterFactory, build_updater, load_session
from policyopt.workers.train.session_cache import SessionCache
from policyopt.workers.train.step import MAX_UPDATE_FAILURES, StepTrainer
from policyopt.workers.train.tensorboard import RunScalars
from policyopt.workers.train.update import StepAbandoned

log = logging.getLogger(__name__)


def is_stale(group: TrajectoryGroup, policy_version: int, max_staleness: int) -> bool:
    """A group sampled (from a prompt) more than ``max_staleness`` updates before the policy it would train.

    Client-built groups (SubmitTrajectories, no prompt text) are checked when submitted and never resampled;
    their lag is handled by the method's mismatch correction.
    """
    return bool(group.prompt) and policy_version - group.adapter_version > max_staleness


READY_READ_BLOCK_MS = 1
"""How long a scheduled step's group reads may block: the scheduler saw the groups queued (0 = forever)."""

CONFIG_ERRORS = (InvalidArgument, PermissionDenied, NotFound, ValueError)
"""Failures to load a run's session that its configuration causes: the run fails at once."""


class TrainerWorker:
    """Trains every active run whose lease it can take, fairly. ``run_forever``, or ``train_once`` per run."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        store: AdapterStore | None = None,
        updater_factory: UpdaterFactory = build_updater,
        lease_ttl_ms: int = 30000,
        block_ms: int = 500,
        retry_backoff_s: float = 5.0,
        memory_budget_mb: float | None = None,
        ranks: Ranks = SINGLE,
    ):
        self.settings = settings
        self.ranks = ranks  # data-parallel: this is rank 0; it tells the others each step (follower.py)
        self.r = redis_client if redis_client is not None else connect(settings)
        self.queue = WorkQueue(
            self.r, claim_idle_ms=settings.claim_idle_ms, max_queued_prompts=settings.max_queued_prompts
        )
        self.runs = RunStore(self.r)
        self.store = store if store is not None else LocalAdapterStore(settings.adapter_root)
        self.checkpoints = CheckpointStore(Path(settings.data_dir) / "checkpoints")
        self.tensorboard = (
            RunScalars(Path(settings.data_dir) / "tensorboard") if settings.tensorboard else None
        )
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.consumer = consumer_name("trainer")
        self.leases = LeaseKeeper(self.r, self.consumer, lease_ttl_ms)
        self.placement = ranks.place(resolve_placement(settings.device, settings.dtype))
        self.models = ModelCatalog.from_settings(settings)
        self.outbound = OutboundPolicy.from_settings(settings)
        self.threads = configure_threads(settings.torch_threads)
        self.block_ms = block_ms
        self.retry_backoff_s = retry_backoff_s
        self.pool = BasePool(self.placement, self.models)
        budget_mb = settings.trainer_memory_mb if memory_budget_mb is None else memory_budget_mb
        self.scheduler = FairScheduler()
        self._updater_factory = updater_factory
        self._sessions = SessionCache(self.pool, int(budget_mb * 2**20))
        self.ready = ReadyRuns(self.r, self.runs)
        self._retries: dict[str, int] = {}  # run -> failed turns in a row (backoff)
        self._turn_seconds = 0.0  # trainer time of the last turn, charged to its run
        self.steps = self._step_trainer()  # one step of a run: update -> checkpoint -> publish -> commit
        self._stop = threading.Event()
        log.info(
            "trainer %s on %s (%s), %d torch threads, %.0f MB for runs",
            self.consumer,
            self.placement.device,
            self.placement.dtype,
            self.threads,
            budget_mb,
        )

    def _step_trainer(self) -> StepTrainer:
        return StepTrainer(
            r=self.r,
            queue=self.queue,
            runs=self.runs,
            store=self.store,
            checkpoints=self.checkpoints,
            leases=self.leases,
            ranks=self.ranks,
            data_dir=self.settings.data_dir,
            tensorboard=self.tensorboard,
            fail_run=self._fail_run,
            sample_every=self.settings.sample_every,
        )

    # -- loop ----------------------------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event | None = None, idle_s: float = 0.5) -> None:
        """Train until ``stop_event`` is set; a step in progress is abandoned between optimizer steps."""
        self._stop = stop_event or self._stop
        try:
            while not self._stop.is_set():
                if not self._train_active_runs():
                    self._stop.wait(idle_s)
        finally:
            self.close()

    def _train_active_runs(self) -> bool:
        """One scheduling pass: the least-served ready run that this trainer may own trains one step.

        True if a step was committed. Runs without enough queued groups cost a stream length each.
        """
        try:
            active = self.runs.active_run_ids()
            self._close_inactive(set(active))
            ready = self.ready.probe(active, self.leases.holds)
            forget_inactive_runs(active)  # the metric series of runs that ended
            TRAINER_RUNS.labels("leased").set(len(self.leases.held()))
            TRAINER_RUNS.labels("loaded").set(len(self._sessions))
        except redis.RedisError as exc:
            redis_error("list_active_runs")
            log.warning("cannot list active runs (Redis unreachable?), retrying: %s", exc)
            return False
        for run_id in self.scheduler.order(ready, time.monotonic()):
            if self._stop.is_set():
                break
            self._turn_seconds = 0.0
            trained = self._train_guarded(run_id, block_ms=READY_READ_BLOCK_MS)
            self.scheduler.charge(run_id, self._turn_seconds)
            if trained:
                return True
        return False

    def _train_guarded(self, run_id: str, block_ms: int | None = None) -> bool:
        """``train_once``; a failure backs the run off exponentially instead of stalling the others."""
        try:
            trained = self.train_once(run_id, block_ms=block_ms)
        except StepAbandoned as exc:
            log.info("run %s: step abandoned (%s); its groups stay queued", run_id, exc)
            self._close_session(run_id)
            return False
        except redis.RedisError as exc:
            redis_error("train_step")
            log.warning("run %s: Redis error, will retry: %s", run_id, exc)
        except PolicyOptError as exc:
            log.warning("run %s: %s", run_id, exc)
            self._close_session(run_id)
        except Exception:
            log.exception("run %s: the step failed; its groups stay queued", run_id)
            self._close_session(run_id)
        else:
            if trained:
                self._retries.pop(run_id, None)
                self.scheduler.clear_backoff(run_id)
            return trained
        failures = self._retries.get(run_id, 0) + 1
        self._retries[run_id] = failures
        self.scheduler.back_off(run_id, time.monotonic() + retry_delay(failures, self.retry_backoff_s))
        return False

    def close(self) -> None:
        """Release every lease so a successor starts at once; drop models."""
        for run_id in list(self._sessions):
            self._sessions.drop(run_id)
        self.leases.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    # -- one step ------------------------------------------------------------------------------------
    def train_once(self, run_id: str, block_ms: int | None = None) -> bool:
        """One step of ``run_id`` if this trainer can own it and enough groups are queued; True if committed."""
        session = self._session(run_id)
        if session is None:
            return False
        started = time.monotonic()
        try:
            return self._collect_and_train(session, block_ms)
        finally:  # the scheduler charges collecting and training, not loading (a shared base serves all)
            self._turn_seconds = time.monotonic() - started

    def _collect_and_train(self, session: RunSession, block_ms: int | None) -> bool:
        run_id = session.run.run_id
        session.activate()
        config = session.run.config
        keep, max_examined = group_filter_of(session.spec, config.prompts_per_step)
        batch = collect_groups(
            self.queue,
            run_id,
            self.consumer,
            config.prompts_per_step,
            keep=keep,
            max_examined=max_examined,
            block_ms=self.block_ms if block_ms is None else block_ms,
            should_continue=lambda: not self._stop.is_set() and self.leases.holds(run_id),
            is_stale=lambda group: is_stale(group, session.version, config.max_staleness),
        )
        self.steps.note_resampled(run_id, batch.resampled)
        if len(batch.groups) < config.prompts_per_step and not (batch.exhausted and batch.groups):
            if batch.exhausted:
                self.steps.ack_dropped_only(session, batch)
            elif max_examined:
                # The queue ran dry before the batch filled: DAPO keeps sampling, so the dropped prompts
                # go back to the rollout workers, each at most max_extra_rounds times.
                self.steps.resample_dropped(batch, max_examined // config.prompts_per_step - 1)
            self.ready.came_up_short(run_id)
            return False
        if self._stop.is_set() or not self.leases.holds(run_id):
            return False  # abandon before touching the model: the groups stay pending
        try:
            committed = self.steps.train(session, batch, self._stop)
        except BaseException:
            self._close_session(run_id)  # the model may hold an uncommitted update: reload from the store
            raise
        self.ready.trained(run_id)
        session.release_gradients()
        release_free_memory(self.placement.device)
        if not committed:
            return False
        self._sessions.touch(run_id)
        self._sessions.evict_over_budget(keep=run_id)
        if config.max_steps and session.version >= config.max_steps:
            self._complete(run_id)
        return True

    # -- sessions ------------------------------------------------------------------------------------
    def _session(self, run_id: str) -> RunSession | None:
        """The run's session, loading it (sticky lease kept) or taking the lease if no lighter trainer is live."""
        session = self._sessions.get(run_id)
        if session is not None:
            if self.leases.holds(run_id):
                return session
            self._close_session(run_id)
        if not self.leases.holds(run_id) and (self.leases.should_defer() or not self.leases.acquire(run_id)):
            return None
        try:
            return self._open_session(run_id)
        except BaseException:
            self.leases.release(run_id)
            raise

    def _open_session(self, run_id: str) -> RunSession | None:
        run = self.runs.get_run(run_id)
        if run.status != RunStatus.RUNNING:
            self.leases.release(run_id)
            return None
        version = reconcile_run(
            run,
            consumer=self.consumer,
            queue=self.queue,
            runs=self.runs,
            store=self.store,
            checkpoints=self.checkpoints,
            guard=self.leases.guard(run_id),
        )
        if run.config.max_steps and version >= run.config.max_steps:
            self._complete(run_id)
            return None
        try:
            session = load_session(
                run,
                version,
                pool=self.pool,
                placement=self.placement,
                store=self.store,
                checkpoints=self.checkpoints,
                updater_factory=self._updater_factory,
                models=self.models,
                outbound=self.outbound,
            )
        except CONFIG_ERRORS as exc:
            self._fail_run(run_id, f"the run's model could not be set up: {exc}")
            return None
        self._sessions.add(session)
        self._sessions.evict_over_budget(keep=run_id)
        log.info("run %s: training from version %d", run_id, version)
        return session

    def _close_session(self, run_id: str) -> None:
        self._sessions.drop(run_id)
        self.leases.release(run_id)
        if self.tensorboard is not None:
            self.tensorboard.close_run(run_id)

    def _close_inactive(self, active: set[str]) -> None:
        known = set(self._sessions) | set(self.leases.held()) | set(self.ready.needed)
        for run_id in known - active:
            log.info("run %s is no longer active; dropping it", run_id)
            self._close_session(run_id)
            self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        self.steps.forget(run_id)
        self.scheduler.forget(run_id)
        self.ready.forget(run_id)
        self._retries.pop(run_id, None)

    def _complete(self, run_id: str) -> None:
        self.runs.set_status(run_id, RunStatus.COMPLETED)
        self._close_session(run_id)
        log.info("run %s reached max_steps; completed", run_id)

    def _fail_run(self, run_id: str, message: str) -> None:
        """FAILED with an ERROR event saying why; the session and lease are dropped."""
        log.error("run %s: %s", run_id, message)
        self._close_session(run_id)
        with contextlib.suppress(PolicyOptError, redis.RedisError):
            self.runs.record_error(run_id, message)
            self.runs.set_status(run_id, RunStatus.FAILED, error=message)


__all__ = ["MAX_UPDATE_FAILURES", "TrainerWorker"]
