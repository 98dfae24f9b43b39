"""WatchRun streams a run's events as SDK dataclasses and ends with the run."""

from __future__ import annotations

import threading

from policyopt.client import EventKind, RunHandle
from policyopt.core.types import EventKind as CoreEventKind
from policyopt.core.types import RunConfig, RunEvent, RunStatus
from policyopt.server import streams
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


def test_a_watch_that_sees_the_run_end_always_gets_its_final_status_event(fresh_redis) -> None:
    store = RunStore(fresh_redis)
    for _ in range(200):  # the run ends while the watch polls every millisecond
        run = store.create_run("a", RunConfig(base_model="tiny"))
        events: list[RunEvent] = []
        watch = streams.run_events(store, run.run_id, "0", lambda: True, poll_ms=1)
        watcher = threading.Thread(target=lambda watch=watch, events=events: events.extend(watch))
        watcher.start()
        store.set_status(run.run_id, RunStatus.CANCELLED)
        watcher.join(timeout=10)
        assert not watcher.is_alive()
        assert [(e.kind, e.message) for e in events][-1] == (CoreEventKind.STATUS, "cancelled")
