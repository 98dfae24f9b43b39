"""What the dashboard shows, read from the ``RunStore``: run summaries, chartable events, versions.

Everything here returns plain JSON-able dicts for one tenant; a run of another tenant, or an id that is
not a run id, raises NotFound exactly like a run that does not exist.
"""

from __future__ import annotations

import re

from policyopt.core.errors import NotFound
from policyopt.core.identifiers import run_id as checked_run_id
from policyopt.core.types import AdapterManifest, EventKind, Run, RunEvent
from policyopt.state.runs import RunStore

EVENTS_PER_PAGE = 500
AXES = ("reward_side", "trajectory_side")
_WARNING = re.compile(r"^(?P<name>[\w.-]+) \((?P<axis>[\w.-]+)\): (?P<detail>.*)$", re.DOTALL)


def method_name(run: Run) -> str:
    resolved = run.config.resolved_method
    return resolved.preset if resolved is not None else run.config.method.preset


def run_summary(run: Run) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "method": method_name(run),
        "base_model": run.config.base_model,
        "version": run.version,
        "step": run.step,
        "max_steps": run.config.max_steps,
        "created_at": run.created_at,
        "error": run.error,
    }


def tenant_run(store: RunStore, tenant: str, run_id: str) -> Run:
    """The tenant's run; NotFound for a malformed id, an unknown run or another tenant's run alike."""
    return store.get_run(checked_run_id(run_id), tenant)


def warning_parts(message: str) -> dict[str, str]:
    """A WARNING event's ``name (axis): message; suggestion: ...`` split into name, axis and detail.

    The trainer writes ``str(DiagnosticWarning)``; any other text keeps its whole message and no axis.
    """
    found = _WARNING.match(message)
    if found is None or found["axis"] not in AXES:
        return {"name": "", "axis": "", "detail": message}
    return {"name": found["name"], "axis": found["axis"], "detail": found["detail"]}


def event_json(event: RunEvent) -> dict[str, object]:
    row: dict[str, object] = {
        "id": event.event_id,
        "kind": event.kind.value,
        "step": event.step,
        "version": event.version,
        "timestamp": event.timestamp,
        "message": event.message,
    }
    if event.kind == EventKind.STEP:
        row["metrics"] = {k: v for k, v in event.metrics.items() if isinstance(v, int | float)}
    if event.kind == EventKind.WARNING:
        row.update(warning_parts(event.message))
    if event.kind == EventKind.SAMPLE:
        row["samples"] = [
            {"prompt": s.prompt, "completion": s.completion, "reward": s.reward, "components": s.components}
            for s in event.samples
        ]
    return row


def events_after(store: RunStore, run: Run, after: str) -> dict[str, object]:
    """The run's events after stream id ``after`` (a page of them) and its current summary.

    ``more`` says another page is waiting, ``last`` is the id to pass next time.
    """
    events = store.read_events(run.run_id, after, count=EVENTS_PER_PAGE)
    return {
        "run": run_summary(run),
        "events": [event_json(e) for e in events],
        "last": events[-1].event_id if events else after,
        "more": len(events) == EVENTS_PER_PAGE,
    }


def version_json(manifest: AdapterManifest) -> dict[str, object]:
    return {
        "version": manifest.version,
        "step": manifest.step,
        "created_at": manifest.created_at,
        "files": dict(sorted(manifest.files.items())),
    }


def versions(store: RunStore, run: Run) -> list[dict[str, object]]:
    return [version_json(m) for m in reversed(store.list_versions(run.run_id))]


def manifest_of(store: RunStore, run: Run, version: int) -> AdapterManifest:
    if version < 1:
        raise NotFound(f"run {run.run_id} has no adapter version {version}")
    return store.get_version(run.run_id, version)


__all__ = [
    "events_after",
    "manifest_of",
    "run_summary",
    "tenant_run",
    "versions",
    "warning_parts",
]
