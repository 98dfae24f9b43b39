"""The trainer's TensorBoard event files (``POLICYOPT_TENSORBOARD``), read back with TensorBoard's reader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from support.trainer import TrainerEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from policyopt.state import LocalAdapterStore
from policyopt.workers.train.tensorboard import RunScalars


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_each_committed_step_is_written_at_its_version_with_the_manifest_metrics(
    trainer_env: TrainerEnv,
) -> None:
    trainer_env.settings = dataclasses.replace(trainer_env.settings, tensorboard=True)
    run = trainer_env.create_run(max_steps=2)
    trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is True
    assert worker.train_once(run.run_id) is True  # reaches max_steps: the run completes
    assert worker.tensorboard is not None and run.run_id not in worker.tensorboard  # its writer is closed

    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    manifests = [store.read_manifest(run.run_id, version) for version in (1, 2)]
    scalars = _scalars(Path(trainer_env.settings.data_dir) / "tensorboard" / run.run_id)
    assert set(scalars) == set(manifests[0].metrics) | set(manifests[1].metrics)
    assert {"reward/mean", "trainer/step_seconds", "trainer/groups"} <= set(scalars)
    for tag, points in scalars.items():
        expected = [(m.version, float(np.float32(m.metrics[tag]))) for m in manifests if tag in m.metrics]
        assert points == expected, tag


def test_tensorboard_is_off_by_default(trainer_env: TrainerEnv) -> None:
    assert trainer_env.worker().tensorboard is None


def test_the_least_recently_written_run_is_closed_beyond_the_bound(tmp_path: Path) -> None:
    scalars = RunScalars(tmp_path, max_open=2)
    for step, run_id in enumerate(["run-a", "run-b", "run-c", "run-b"], start=1):
        scalars.write_step(run_id, step, {"reward/mean": step / 10})
    assert "run-a" not in scalars and "run-b" in scalars and "run-c" in scalars
    scalars.close()
    assert _scalars(tmp_path / "run-a") == {"reward/mean": [(1, float(np.float32(0.1)))]}
    assert _scalars(tmp_path / "run-b") == {
        "reward/mean": [(2, float(np.float32(0.2))), (4, float(np.float32(0.4)))]
    }
