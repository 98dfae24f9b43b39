"""Reconciling a run's Redis state with the adapter store when a trainer takes the run over.

The step protocol is: train -> checkpoint vN -> publish adapter vN -> commit vN (index + ack + events
in one MULTI). A crash before the publish leaves the groups pending and nothing visible: they are
trained again by the next owner. A crash between publish and commit leaves the store one version
ahead of Redis: the next owner finishes that commit with the group ids in the manifest (never
retraining them), so versions stay consecutive and each group is trained exactly once.
"""

from __future__ import annotations

import logging

from policyopt.core.errors import FailedPrecondition
from policyopt.core.types import Run, TrajectoryGroup
from policyopt.state.adapter_store import AdapterStore
from policyopt.state.evals import EvalStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.collect import group_key
from policyopt.workers.train.retention import evaluation_due

log = logging.getLogger(__name__)


def reconcile_run(
    run: Run,
    *,
    consumer: str,
    queue: WorkQueue,
    runs: RunStore,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    guard: tuple[str, str],
) -> int:
    """Adopt the run's pending groups, finish interrupted commits; return the newest committed version."""
    store.discard_incomplete(run.run_id)
    on_disk = store.latest_version(run.run_id)
    if on_disk < run.version:
        raise FailedPrecondition(
            f"run {run.run_id} is at version {run.version} but the adapter store at this trainer has "
            f"only {on_disk}; point POLICYOPT_ADAPTER_STORE at the store the run was trained into"
        )
    pending = queue.adopt_pending_groups(run.run_id, consumer)
    for version in range(run.version + 1, on_disk + 1):
        finish_commit(
            run,
            version,
            pending,
            queue=queue,
            runs=runs,
            store=store,
            checkpoints=checkpoints,
            guard=guard,
        )
    return on_disk


def finish_commit(
    run: Run,
    version: int,
    pending: list[tuple[str, TrajectoryGroup]],
    *,
    queue: WorkQueue,
    runs: RunStore,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    guard: tuple[str, str],
) -> None:
    """Commit a version that was published but never committed, acking the groups it records and
    queueing its evaluation when due (as the interrupted commit would have)."""
    run_id = run.run_id
    manifest = store.read_manifest(run_id, version)
    state = checkpoints.load(run_id, version) or {}
    dropped = state.get("dropped_group_ids", [])
    wanted = set(manifest.group_ids) | set(dropped if isinstance(dropped, list) else [])
    message_ids = [mid for mid, group in pending if group_key(group, mid) in wanted]
    found = {group_key(group, mid) for mid, group in pending if mid in set(message_ids)}
    missing = sorted(set(manifest.group_ids) - found)
    if missing:
        log.warning(
            "run %s v%d: %d trained group(s) were no longer pending: %s",
            run_id,
            version,
            len(missing),
            missing[:5],
        )
    evaluation = evaluation_due(EvalStore(runs.r), run, version)
    runs.commit_step(queue, manifest, message_ids, guard=guard, evaluation=evaluation)
    log.info(
        "run %s: finished the interrupted commit of version %d (%d groups acked)",
        run_id,
        version,
        len(message_ids),
    )


__all__ = ["finish_commit", "reconcile_run"]
