"""A run's events as rows: what ``policyopt runs export`` writes.

``step_rows`` turns STEP events into one row per step; ``write_csv`` writes them with the columns
step, version, wall_time and every metric key (sorted; blank where a step lacks it). WARNING and ERROR
events are notes: a second csv beside the first (``RUN.warnings.csv``), or text summaries in the
TensorBoard export. SAMPLE events (a few completions every ``sample_every`` steps) become one JSON line
per completion in ``RUN.samples.jsonl`` (``write_samples``). ``read_events`` reads a run's events up to
now through the SDK.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from policyopt.client import Client
from policyopt.client.types import EventKind, RunEvent, RunInfo, RunStatus

NOTE_KINDS = (EventKind.WARNING, EventKind.ERROR)
BASE_COLUMNS = ("step", "version", "wall_time")


@dataclass(frozen=True)
class StepRow:
    step: int
    version: int
    wall_time: float
    metrics: dict[str, float]


def read_events(client: Client, run_id: str) -> tuple[RunInfo, list[RunEvent]]:
    """The run's snapshot and its events so far (WatchRun from the beginning).

    WatchRun ends by itself once an ended run's events are all sent; for a run still RUNNING the stream
    would follow it, so reading stops at the VERSION event of the version the snapshot reports (a step's
    events are committed together, ending with that event). A running run without versions has nothing to
    wait for and gives no events.
    """
    info = client.get_run(run_id).info
    if info.status != RunStatus.RUNNING:
        return info, list(client.watch_run(run_id))
    if info.version == 0:
        return info, []
    return info, list(_until_version(client.watch_run(run_id), info.version))


def _until_version(events: Iterator[RunEvent], version: int) -> Iterator[RunEvent]:
    for event in events:
        yield event
        if event.kind == EventKind.VERSION and event.version >= version:
            return


def step_rows(events: Iterable[RunEvent]) -> list[StepRow]:
    """One row per step from the STEP events, in step order; a step committed twice keeps its last event."""
    by_step = {
        e.step: StepRow(e.step, e.version, e.timestamp, dict(e.metrics))
        for e in events
        if e.kind == EventKind.STEP
    }
    return [by_step[step] for step in sorted(by_step)]


def notes(events: Iterable[RunEvent]) -> list[RunEvent]:
    """The WARNING and ERROR events, in order."""
    return [e for e in events if e.kind in NOTE_KINDS]


def csv_columns(rows: Iterable[StepRow]) -> list[str]:
    keys = sorted({key for row in rows for key in row.metrics})
    return [*BASE_COLUMNS, *keys]


def write_csv(rows: list[StepRow], path: Path) -> None:
    """step, version, wall_time and the sorted metric keys; a metric a step lacks is left blank."""
    columns = csv_columns(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            values = {"step": row.step, "version": row.version, "wall_time": row.wall_time, **row.metrics}
            writer.writerow([_cell(values.get(column)) for column in columns])


def notes_path(csv_path: Path) -> Path:
    """``RUN.csv`` -> ``RUN.warnings.csv``."""
    return csv_path.with_name(f"{csv_path.stem}.warnings.csv")


def write_notes_csv(events: list[RunEvent], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "wall_time", "kind", "message"])
        for e in events:
            writer.writerow([e.step, repr(e.timestamp), e.kind.value, e.message])


def write_tensorboard(rows: list[StepRow], events: list[RunEvent], directory: Path) -> None:
    """Scalars at global step = step (wall time of the step's commit); notes as text under ``warnings``
    and ``errors``. Needs the tensorboard package."""
    from policyopt.workers.train.tensorboard import EventWriter

    writer = EventWriter(directory)
    try:
        for row in rows:
            writer.add_scalars(row.step, row.metrics, wall_time=row.wall_time)
        for e in events:
            writer.add_text(f"{e.kind.value}s", e.step, e.message, wall_time=e.timestamp)
    finally:
        writer.close()


def samples_path(out: Path) -> Path:
    """``RUN.csv`` or ``RUN-tensorboard`` -> ``RUN.samples.jsonl`` beside it."""
    return out.with_name(f"{out.stem.removesuffix('-tensorboard')}.samples.jsonl")


def write_samples(events: Iterable[RunEvent], path: Path) -> int:
    """One JSON line per kept completion: step, version, prompt, completion, reward, components."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for event in events:
            if event.kind != EventKind.SAMPLE:
                continue
            for sample in event.samples:
                line = {"step": event.step, "version": event.version, "prompt": sample.prompt,
                        "completion": sample.completion, "reward": sample.reward,
                        "components": sample.components}  # fmt: skip
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
    return count


def _cell(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


__all__ = [
    "StepRow",
    "csv_columns",
    "notes",
    "notes_path",
    "read_events",
    "samples_path",
    "step_rows",
    "write_csv",
    "write_notes_csv",
    "write_samples",
    "write_tensorboard",
]
