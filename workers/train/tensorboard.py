"""TensorBoard event files: the trainer's per-run step metrics (``POLICYOPT_TENSORBOARD``) and the writer
``policyopt runs export --format tensorboard`` uses.

Scalars are written as plain ``simple_value`` summaries (what ``torch.utils.tensorboard`` writes), so
TensorBoard and its ``EventAccumulator`` read them as scalars; values are stored as float32. The
``tensorboard`` package (in the ``service`` extra) is imported only when a writer is opened.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from policyopt.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

log = logging.getLogger(__name__)

MAX_OPEN_RUNS = 16
"""Run writers the trainer keeps open (each holds a file and a thread); the least recently written closes."""


def _event_file_writer(directory: Path) -> EventFileWriter:
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:
        raise FailedPrecondition(
            "writing TensorBoard event files needs the tensorboard package: pip install 'policyopt[service]' "
            "(or pip install tensorboard)"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    return EventFileWriter(str(directory))


class EventWriter:
    """One directory of TensorBoard event files: scalars and text at integer steps."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writer = _event_file_writer(directory)

    def add_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in sorted(scalars.items())]
        self._add(step, Summary(value=values), wall_time)

    def add_text(self, tag: str, step: int, text: str, wall_time: float | None = None) -> None:
        """A text summary (TensorBoard's Text tab)."""
        import numpy as np
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text import metadata
        from tensorboard.util import tensor_util

        value = Summary.Value(
            tag=tag,
            metadata=metadata.create_summary_metadata(display_name=tag, description=""),
            tensor=tensor_util.make_tensor_proto(np.array(text, dtype=object)),
        )
        self._add(step, Summary(value=[value]), wall_time)

    def _add(self, step: int, summary: Summary, wall_time: float | None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        event = Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary)
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class RunScalars:
    """The trainer's writers, one per run under ``root/RUN``; at most ``max_open`` open at a time."""

    def __init__(self, root: Path, max_open: int = MAX_OPEN_RUNS) -> None:
        self.root = root
        self.max_open = max_open
        self._writers: OrderedDict[str, EventWriter] = OrderedDict()

    def write_step(self, run_id: str, version: int, metrics: Mapping[str, float]) -> None:
        """The step's metrics at global step ``version``, flushed. A failure is logged, never raised:
        the step is already committed."""
        try:
            writer = self._writer(run_id)
            writer.add_scalars(version, metrics)
            writer.flush()
        except (OSError, FailedPrecondition) as exc:
            log.warning("run %s: cannot write TensorBoard metrics of version %d: %s", run_id, version, exc)

    def close_run(self, run_id: str) -> None:
        writer = self._writers.pop(run_id, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for run_id in list(self._writers):
            self.close_run(run_id)

    def _writer(self, run_id: str) -> EventWriter:
        writer = self._writers.get(run_id)
        if writer is None:
            writer = EventWriter(self.root / run_id)
            self._writers[run_id] = writer
            while len(self._writers) > self.max_open:
                self.close_run(next(iter(self._writers)))
        self._writers.move_to_end(run_id)
        return writer

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._writers


__all__ = ["MAX_OPEN_RUNS", "EventWriter", "RunScalars"]
