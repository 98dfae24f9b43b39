"""WatchRun streams a run's events as SDK dataclasses and ends with the run."""

from __future__ import annotations

import threading

from policyopt.client import EventKind, RunHandle
from policyopt.core.types import EventKind as CoreEventKind
from policyopt.core.types import RunEvent
from policyopt.state.runs import RunStore


def test_watch_yields_status_error_and_step_events_then_ends(run_a: RunHandle, redis_client) -> None:
    store = RunStore(redis_client)
    store.record_error(run_a.run_id, "reward endpoint 'ones' returned NaN for prompt p-1")
    store.add_event(
        RunEvent(run_id=run_a.run_id, kind=CoreEventKind.STEP, step=1, metrics={"reward/mean": 0.5})
    )
    canceller = threading.Timer(0.5, run_a.cancel)
    canceller.start()
    events = list(run_a.watch())
    canceller.join()
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.STATUS, EventKind.ERROR, EventKind.STEP, EventKind.STATUS]
    assert "NaN" in events[1].message
    assert events[2].metrics == {"reward/mean": 0.5}
    assert events[-1].message.startswith("cancelled")


def test_watch_resumes_after_an_event_id(run_a: RunHandle, redis_client) -> None:
    RunStore(redis_client).record_error(run_a.run_id, "first")
    run_a.cancel()
    first, *rest = list(run_a.watch())
    assert [e.kind for e in list(run_a.watch(after_event_id=first.event_id))] == [e.kind for e in rest]


def test_leaving_a_watch_early_cancels_the_stream(run_a: RunHandle) -> None:
    for event in run_a.watch():
        assert event.kind == EventKind.STATUS
        break
    assert run_a.refresh().status.value == "running"  # the channel is still usable
