"""``policyopt runs``: the runs of your tenant; ``policyopt runs export RUN``: a run's step metrics as csv
or TensorBoard event files (``cli/export.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policyopt.cli import export
from policyopt.cli.common import Subparsers, client_from, print_table, when
from policyopt.client.types import EventKind, RunStatus


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list runs, or export a run's metrics")
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    exporting = actions.add_parser(
        "export",
        help="a run's step metrics as csv (one row per step) or TensorBoard event files",
        description="Write the step metrics a run has so far (all of them once it has ended). csv: one "
        "row per step with step, version, wall_time and every metric; WARNING and ERROR events go to "
        "OUT.warnings.csv. tensorboard: event files (scalars at global step = step, warnings as text).",
    )
    exporting.add_argument("run")
    exporting.add_argument("--format", choices=("csv", "tensorboard"), default="csv")
    exporting.add_argument(
        "--out", help="file (csv) or directory (tensorboard); default RUN.csv or RUN-tensorboard/"
    )
    exporting.set_defaults(func=export_run)


def run(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        runs = client.list_runs()
    if not runs:
        print("no runs")
        return 0
    rows = [
        [
            r.run_id,
            r.status.value,
            r.method,
            str(r.step),
            str(r.version),
            str(r.prompts_submitted),
            when(r.created_at),
            r.base_model,
        ]
        for r in runs
    ]
    print_table(["RUN", "STATUS", "METHOD", "STEP", "VERSION", "PROMPTS", "CREATED", "BASE MODEL"], rows)
    return 0


def export_run(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        info, events = export.read_events(client, args.run)
    rows, notes = export.step_rows(events), export.notes(events)
    if args.format == "csv":
        out = Path(args.out or f"{args.run}.csv")
        export.write_csv(rows, out)
        if notes:
            export.write_notes_csv(notes, export.notes_path(out))
    else:
        out = Path(args.out or f"{args.run}-tensorboard")
        export.write_tensorboard(rows, notes, out)
    print(f"wrote {len(rows)} steps and {len(notes)} warnings/errors of run {args.run} to {out}")
    if any(e.kind == EventKind.SAMPLE for e in events):
        kept = export.write_samples(events, export.samples_path(out))
        print(f"wrote {kept} sampled completions to {export.samples_path(out)}")
    if info.status == RunStatus.RUNNING:
        print(
            f"run {args.run} is still running: this export has its steps up to version {info.version}; "
            "export again later for the rest",
            file=sys.stderr,
        )
    return 0
