"""One trainer step of one run, after its groups are collected: update, check, checkpoint, publish, commit.

``TrainerWorker`` (worker.py) decides which run trains and owns its session and lease; ``StepTrainer``
takes the session and the collected groups and either commits version N+1 or leaves nothing behind:
``PolicyUpdater.step`` (gated by ``guards.step_gate``), ``guards.non_finite`` (a non-finite update fails
the run unpublished), checkpoint the trainer state as vN, publish adapter vN (atomic directory rename),
then ``RunStore.commit_step`` (index + ack + events + a due evaluation in one MULTI, guarded by the lease),
then retention. It also handles a collection that came up short (resample or ack the dropped groups)
and turns the updater's diagnostic warnings into run events.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from policyopt.core.metrics import record_train_step
from policyopt.core.settings import Settings
from policyopt.core.telemetry import span_from, tracer
from policyopt.core.types import AdapterManifest, EventKind, RunEvent
from policyopt.state import AdapterStore, RunStore, WorkQueue
from policyopt.state.evals import EvalStore
from policyopt.workers.algorithms import pin_method
from policyopt.workers.train import policy, retention
from policyopt.workers.train.announcements import WarningAnnouncer
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.collect import CollectedGroups, staleness_metrics
from policyopt.workers.train.distributed import Ranks, RanksDiverged
from policyopt.workers.train.fault_points import crash_for_test, pause_for_test
from policyopt.workers.train.follower import StepOrder
from policyopt.workers.train.guards import non_finite, step_gate
from policyopt.workers.train.lease import LeaseKeeper
from policyopt.workers.train.reward_watch import RewardHackingWatch, component_means, sample_event
from policyopt.workers.train.session import RunSession
from policyopt.workers.train.tensorboard import RunScalars
from policyopt.workers.train.update import StepAbandoned

log = logging.getLogger(__name__)

MAX_UPDATE_FAILURES = 3
"""Consecutive failed updates of a run before it is marked FAILED (the same groups would fail again)."""


class StepTrainer:
    """Trains and commits one step of a run's session; keeps the per-run counts that span steps.

    ``fail_run(run_id, message)`` is the worker's: it marks the run FAILED and drops its session and lease.
    """

    def __init__(
        self,
        *,
        r: redis.Redis,
        queue: WorkQueue,
        runs: RunStore,
        store: AdapterStore,
        checkpoints: CheckpointStore,
        leases: LeaseKeeper,
        ranks: Ranks,
        data_dir: str,
        tensorboard: RunScalars | None,
        fail_run: Callable[[str, str], None],
        sample_every: int = Settings.sample_every,
    ) -> None:
        self.r, self.queue, self.runs, self.store = r, queue, runs, store
        self.checkpoints, self.leases, self.ranks = checkpoints, leases, ranks
        self.data_dir = data_dir
        self.tensorboard = tensorboard
        self.fail_run = fail_run
        self.update_failures: dict[str, int] = {}  # run -> failed updates in a row
        self.resampled: dict[str, int] = {}  # run -> stale groups sent back since its last step
        self.announcer = WarningAnnouncer()
        self.sample_every = sample_every  # the server's default; a run's own sample_every wins
        self.hacking = RewardHackingWatch()

    def note_resampled(self, run_id: str, count: int) -> None:
        """Resamples of earlier, short collections count towards the step that finally trains."""
        self.resampled[run_id] = self.resampled.get(run_id, 0) + count

    def forget(self, run_id: str) -> None:
        """Drop what is kept about a run that is no longer active."""
        self.announcer.forget(run_id)
        self.hacking.forget(run_id)
        self.update_failures.pop(run_id, None)

    # -- the step ------------------------------------------------------------------------------------
    def train(self, session: RunSession, batch: CollectedGroups, stop: threading.Event) -> bool:
        """Update, check, checkpoint, publish, commit; False (run failed) if the update went non-finite."""
        run_id, version = session.run.run_id, session.version + 1
        with span_from(batch.groups[0].trace, "train_step", run_id=run_id, version=version):
            started = time.monotonic()
            metrics = self.update(session, batch, version, stop)
            problem = non_finite(session, metrics)
            if problem:
                self.fail_run(
                    run_id,
                    f"step {version} made {problem} non-finite, so it was not published and version "
                    f"{version - 1} stays the latest; lower learning_rate (now {session.run.config.learning_rate:g})",
                )
                return False
            pause_for_test()
            metrics.update(
                {
                    "trainer/step_seconds": time.monotonic() - started,
                    "trainer/groups": float(len(batch.groups)),
                    "trainer/groups_dropped": float(len(batch.dropped_message_ids)),
                    "trainer/groups_resampled_stale": float(self.resampled.pop(run_id, 0)),
                }
            )
            metrics.update(staleness_metrics(batch.groups, session.version))
            metrics.update(component_means(batch.groups))
            manifest = self._save_and_commit(session, version, batch, metrics)
        session.version = version
        retention.apply_retention(session.run, version, self.runs, self.store, self.checkpoints)
        record_train_step(run_id, metrics)
        if self.tensorboard is not None:
            self.tensorboard.write_step(run_id, version, manifest.metrics)
        log.info(
            "run %s: committed version %d (%d groups, %.1fs)",
            run_id,
            version,
            len(batch.groups),
            metrics["trainer/step_seconds"],
        )
        return True

    def _save_and_commit(
        self, session: RunSession, version: int, batch: CollectedGroups, metrics: dict[str, float]
    ) -> AdapterManifest:
        """Checkpoint the trainer state, publish the adapter, then commit the step under the lease."""
        run_id = session.run.run_id
        self.checkpoints.save(
            run_id,
            version,
            {
                "updater": session.updater.state_dict(),
                "dropped_group_ids": batch.dropped_group_ids,
            },
        )
        crash_for_test("after_checkpoint", version)
        with tracer().start_as_current_span("publish", attributes={"run_id": run_id, "version": version}):
            manifest = self.publish(session, version, batch, metrics)
            crash_for_test("after_publish", version)
            events = self.warning_events(session, version, batch) + self.reward_events(
                session, version, batch, metrics
            )
            self.runs.commit_step(
                self.queue,
                manifest,
                batch.message_ids + batch.dropped_message_ids,
                events,
                guard=self.leases.guard(run_id),
                evaluation=retention.evaluation_due(EvalStore(self.r), session.run, version),
            )
        return manifest

    def update(
        self, session: RunSession, batch: CollectedGroups, version: int, stop: threading.Event
    ) -> dict[str, float]:
        """``updater.step``; a run whose update keeps failing on the same groups is failed, with the reason."""
        run_id = session.run.run_id
        if self.ranks.is_distributed:
            self.ranks.broadcast_object(StepOrder(session.run, session.version, list(batch.groups)))
        try:
            metrics = dict(
                session.updater.step(
                    batch.groups, should_continue=step_gate(run_id, stop, self.leases, self.runs)
                )
            )
        except StepAbandoned:
            raise
        except Exception as exc:
            failures = self.update_failures.get(run_id, 0) + 1
            self.update_failures[run_id] = failures
            message = f"the policy update of step {version} failed ({type(exc).__name__}: {exc})"
            if failures >= MAX_UPDATE_FAILURES:
                self.fail_run(run_id, f"{message}, {failures} times in a row")
            else:
                self.runs.record_error(
                    run_id, f"{message}; retrying (attempt {failures} of {MAX_UPDATE_FAILURES})"
                )
            if self.ranks.is_distributed:  # the other ranks may wait in a collective this rank left
                raise RanksDiverged(message) from exc
            raise
        self.update_failures.pop(run_id, None)
        return metrics

    def publish(
        self, session: RunSession, version: int, batch: CollectedGroups, metrics: dict[str, float]
    ) -> AdapterManifest:
        """Write adapter ``version`` (and the critic) to the store with its manifest."""
        config = session.run.config
        manifest = AdapterManifest(
            run_id=session.run.run_id,
            version=version,
            step=version,
            base_model=config.base_model,
            method=session.spec.name,
            metrics={k: float(v) for k, v in metrics.items()},
            group_ids=batch.group_ids,
            resolved_method=config.resolved_method or pin_method(session.spec),
        )
        with tempfile.TemporaryDirectory(prefix="policyopt-adapter-", dir=self.data_dir) as staging:
            policy.save_adapter(session.model, Path(staging), session.adapter)
            policy.save_critic(session.updater.critic, Path(staging))
            return self.store.publish(session.run.run_id, version, Path(staging), manifest)

    # -- a collection that came up short -------------------------------------------------------------
    def resample_dropped(self, batch: CollectedGroups, max_rounds: int) -> None:
        """Send the dropped prompts back to the rollout workers, each at most ``max_rounds`` times."""
        for message_id, group in zip(batch.dropped_message_ids, batch.dropped_groups, strict=True):
            if group.prompt and group.attempt < max_rounds:
                self.queue.resample_group(message_id, group, attempt=group.attempt + 1)

    def ack_dropped_only(self, session: RunSession, batch: CollectedGroups) -> None:
        """Every group examined up to the filter's limit was dropped: ack them without a step."""
        pipe = self.r.pipeline(transaction=True)
        self.queue.ack_groups(pipe, session.run.run_id, batch.dropped_message_ids)
        self.runs.add_event(
            RunEvent(
                run_id=session.run.run_id,
                kind=EventKind.WARNING,
                step=session.version,
                message=f"dynamic sampling dropped all {len(batch.dropped_message_ids)} groups it examined "
                "(zero reward variance); vary prompt difficulty or raise "
                "reward_side.group_filter.max_extra_rounds",
            ),
            pipe,
        )
        pipe.execute()

    # -- warnings --------------------------------------------------------------------------------------
    def warning_events(self, session: RunSession, version: int, batch: CollectedGroups) -> list[RunEvent]:
        """The step's WARNING events: the updater's diagnostics and an exhausted dynamic sampling."""
        extra = []
        if batch.exhausted:
            extra.append(
                f"dynamic sampling reached its limit after {batch.examined} groups; this step trained on "
                f"{len(batch.groups)} of {session.run.config.prompts_per_step} groups; most groups have zero "
                "reward variance (raise reward_side.group_filter.max_extra_rounds or vary prompt difficulty)"
            )
        return self.announcer.events(session.run.run_id, version, session.updater.last_warnings, extra)

    def reward_events(
        self, session: RunSession, version: int, batch: CollectedGroups, metrics: dict[str, float]
    ) -> list[RunEvent]:
        """The reward-hacking WARNING (``reward_watch``) when due, and a SAMPLE event every sample_every steps."""
        run_id, config = session.run.run_id, session.run.config
        hacking = self.hacking.observe(run_id, metrics, config.correctness_component)
        events = self.announcer.events(run_id, version, [hacking] if hacking else [])
        every = config.sample_every or self.sample_every
        if every > 0 and version % every == 0:
            events.append(sample_event(run_id, version, batch.groups))
        return events


__all__ = ["MAX_UPDATE_FAILURES", "StepTrainer"]
