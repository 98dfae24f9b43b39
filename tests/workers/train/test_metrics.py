"""The trainer's metrics with real parts (Valkey, the tiny model): steps, versions, the last step's reward
and duration per run, the runs it holds, and the series forgotten when a run ends."""

from __future__ import annotations

from prometheus_client import REGISTRY
from support.trainer import TrainerEnv

from policyopt.core.types import RunStatus
from policyopt.state import LocalAdapterStore
from policyopt.state.runs import RunStore


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_each_committed_step_counts_a_version_and_sets_the_last_reward_and_duration(
    trainer_env: TrainerEnv,
) -> None:
    run = trainer_env.create_run()
    trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is True
    assert sample("policyopt_adapter_versions_published_total", run_id=run.run_id) == 1
    assert worker.train_once(run.run_id) is True
    assert sample("policyopt_adapter_versions_published_total", run_id=run.run_id) == 2
    assert sample("policyopt_trainer_optimizer_steps_total", run_id=run.run_id) == 2

    manifest = LocalAdapterStore(trainer_env.settings.adapter_root).read_manifest(run.run_id, 2)
    assert sample("policyopt_trainer_reward_mean", run_id=run.run_id) == manifest.metrics["reward/mean"]
    seconds = sample("policyopt_trainer_last_step_duration_seconds", run_id=run.run_id)
    assert seconds == manifest.metrics["trainer/step_seconds"] and seconds > 0


def test_a_pass_reports_the_runs_held_and_forgets_a_run_that_ended(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run()
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()

    assert worker._train_active_runs() is True
    worker._train_active_runs()  # the gauges are set by each pass, after its listing
    assert sample("policyopt_trainer_runs", state="leased") == 1
    assert sample("policyopt_trainer_runs", state="loaded") == 1
    assert sample("policyopt_adapter_versions_published_total", run_id=run.run_id) == 1

    RunStore(trainer_env.r).set_status(run.run_id, RunStatus.CANCELLED)
    worker._train_active_runs()
    assert sample("policyopt_trainer_runs", state="leased") == 0
    assert sample("policyopt_trainer_runs", state="loaded") == 0
    assert sample("policyopt_adapter_versions_published_total", run_id=run.run_id) is None
    assert sample("policyopt_trainer_reward_mean", run_id=run.run_id) is None
