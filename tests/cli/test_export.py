"""``policyopt runs export`` against the session server, for runs a real trainer stepped on the tiny model."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from support.trainer import TrainerEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from policyopt.cli.main import main
from policyopt.client import Client
from policyopt.core.types import EventKind, RunEvent
from policyopt.state.runs import RunStore


@dataclass(frozen=True)
class Runs:
    address: str
    key: str
    completed: str  # max_steps=2, both steps trained, one WARNING event
    running: str  # one step trained, still running
    step_events: dict[str, list[RunEvent]]  # run -> its STEP events


@pytest.fixture(scope="module")
def runs(server, valkey_url: str, tiny_model_dir: Path) -> Iterator[Runs]:
    key = server.keys["b"]
    with Client(server.address, api_key=key) as client:
        completed = client.create_run(str(tiny_model_dir), group_size=3, prompts_per_step=2, max_steps=2)
        running = client.create_run(str(tiny_model_dir), group_size=3, prompts_per_step=2)
    r = redis.Redis.from_url(valkey_url)
    settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1)
    env = TrainerEnv(settings=settings, r=r, model_dir=tiny_model_dir)
    store = RunStore(r)
    worker = env.worker()
    try:
        for run_id, steps in ((completed.run_id, 2), (running.run_id, 1)):
            env.push_groups(store.get_run(run_id), 2 * steps)
            for _ in range(steps):
                assert worker.train_once(run_id) is True
        store.add_event(
            RunEvent(run_id=completed.run_id, kind=EventKind.WARNING, step=2, message='a, "quoted" warning')
        )
        step_events = {
            run_id: [e for e in store.read_events(run_id, count=1000) if e.kind == EventKind.STEP]
            for run_id in (completed.run_id, running.run_id)
        }
        assert store.get_run(completed.run_id).status.value == "completed"
        yield Runs(server.address, key, completed.run_id, running.run_id, step_events)
    finally:
        worker.close()
        r.close()


def _export(runs: Runs, *argv: str) -> int:
    return main(["--address", runs.address, "--api-key", runs.key, "runs", "export", *argv])


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_csv_has_one_row_per_step_with_the_event_metrics(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "metrics.csv"
    assert _export(runs, runs.completed, "--out", str(out)) == 0

    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    events = runs.step_events[runs.completed]
    keys = sorted({k for e in events for k in e.metrics})
    assert columns == ["step", "version", "wall_time", *keys]
    assert len(rows) == len(events) == 2
    for row, event in zip(rows, events, strict=True):
        assert (int(row["step"]), int(row["version"])) == (event.step, event.version)
        assert float(row["wall_time"]) == event.timestamp
        assert {k: float(row[k]) for k in keys if row[k] != ""} == event.metrics

    with (tmp_path / "metrics.warnings.csv").open(newline="") as f:
        warnings = list(csv.DictReader(f))
    assert [(w["step"], w["kind"], w["message"]) for w in warnings] == [
        ("2", "warning", 'a, "quoted" warning')
    ]


def test_tensorboard_export_reads_back_at_global_step_equal_to_step(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    assert _export(runs, runs.completed, "--format", "tensorboard", "--out", str(out)) == 0

    events = runs.step_events[runs.completed]
    expected: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for tag, value in e.metrics.items():
            expected.setdefault(tag, []).append((e.step, float(np.float32(value))))
    assert _scalars(out) == expected
    accumulator = EventAccumulator(str(out))
    accumulator.Reload()
    assert "warnings" in accumulator.Tags()["tensors"]


def test_a_running_run_exports_its_steps_so_far_and_says_so(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _export(runs, runs.running) == 0  # returns once caught up, though the run goes on

    with (tmp_path / f"{runs.running}.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [e.step for e in runs.step_events[runs.running]] == [1]
    assert "still running" in capsys.readouterr().err


def test_an_unknown_run_is_an_error(runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _export(runs, "run-0123456789ab", "--out", str(tmp_path / "x.csv")) == 1
    assert "NotFound" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
