"""Around a commit: the new version's evaluation (queued in the commit's MULTI), and what retention lets go.

Retention (``RunConfig.retention``) counts unpromoted versions. Never deleted, and not counted: the newest
version, promoted versions, version 0 (a warm start's adapter, the root of the run's lineage), versions a
rollout may still sample with (within ``max_staleness`` of the newest) and versions waiting for their
evaluation (it may promote them). Of the rest the newest ``keep_versions`` stay. A version leaves the
adapter index before its directory goes, so nobody is offered files that are being deleted. Trainer
states beyond the newest ``keep_trainer_states`` are deleted (never the newest).
"""

from __future__ import annotations

import logging

from policyopt.core.types import AdapterManifest, Run
from policyopt.state import AdapterStore, RunStore
from policyopt.state.evals import EvalStore, EvalTask
from policyopt.workers.train.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


def evaluation_due(evals: EvalStore, run: Run, version: int) -> EvalTask | None:
    """Version ``version``'s evaluation when the run evaluates it (every ``eval.every`` versions), for
    ``RunStore.commit_step(evaluation=...)``; the trainer's step and its recovery of a commit both ask."""
    every = run.config.eval.every
    if every <= 0 or version % every != 0 or evals.prompt_count(run.run_id) == 0:
        return None
    return EvalTask(run.run_id, version)


def _awaits_evaluation(run: Run, manifest: AdapterManifest) -> bool:
    every = run.config.eval.every
    return every > 0 and manifest.version % every == 0 and not manifest.eval


def versions_to_delete(run: Run, manifests: list[AdapterManifest], newest: int) -> list[int]:
    """The versions retention deletes now (module docstring), ascending."""
    keep = run.config.retention.keep_versions
    if keep <= 0:
        return []
    lowest_sampled = newest - run.config.max_staleness
    candidates = [
        m.version
        for m in manifests
        if 0 < m.version < lowest_sampled and not m.promoted and not _awaits_evaluation(run, m)
    ]
    return sorted(candidates)[:-keep] if len(candidates) > keep else []


def trainer_states_to_delete(run: Run, versions: list[int]) -> list[int]:
    keep = run.config.retention.keep_trainer_states
    return sorted(versions)[:-keep] if keep > 0 and len(versions) > keep else []


def apply_retention(
    run: Run, newest: int, runs: RunStore, store: AdapterStore, checkpoints: CheckpointStore
) -> list[int]:
    """Delete the versions and trainer states retention lets go; returns the deleted versions."""
    doomed = versions_to_delete(run, runs.list_versions(run.run_id), newest)
    runs.unindex_versions(run.run_id, doomed)
    for version in doomed:
        store.remove_version(run.run_id, version)
    for version in trainer_states_to_delete(run, checkpoints.versions(run.run_id)):
        checkpoints.remove_version(run.run_id, version)
    if doomed:
        log.info("run %s: retention deleted versions %s", run.run_id, doomed)
    return doomed


__all__ = [
    "apply_retention",
    "evaluation_due",
    "trainer_states_to_delete",
    "versions_to_delete",
]
