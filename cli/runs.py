"""``policyopt runs``: the runs of your tenant."""

from __future__ import annotations

import argparse

from policyopt.cli.common import Subparsers, client_from, print_table, when


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list runs")
    parser.set_defaults(func=run)


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
