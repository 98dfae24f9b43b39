"""``policyopt adapters list RUN`` and ``policyopt adapters pull RUN VERSION DEST``."""

from __future__ import annotations

import argparse

from policyopt.cli.common import Subparsers, client_from, print_table, when


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("adapters", help="list or download adapter versions")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="versions of a run")
    listing.add_argument("run")
    listing.set_defaults(func=list_versions)
    pull = actions.add_parser("pull", help="download a version (sha256-verified) into DEST/RUN/vNNNNNN")
    pull.add_argument("run")
    pull.add_argument("version", help="a version number or 'latest'")
    pull.add_argument("dest")
    pull.set_defaults(func=pull_version)


def list_versions(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        versions = client.list_adapters(args.run)
    if not versions:
        print(f"run {args.run} has no adapter versions yet")
        return 0
    rows = []
    for v in versions:
        reward = v.metrics.get("reward/mean")
        rows.append(
            [str(v.version), str(v.step), "-" if reward is None else f"{reward:.4f}", when(v.created_at)]
        )
    print_table(["VERSION", "STEP", "REWARD", "CREATED"], rows)
    return 0


def pull_version(args: argparse.Namespace) -> int:
    version: int | str = int(args.version) if args.version.isdigit() else args.version
    with client_from(args) as client:
        path = client.pull_adapter(args.run, version, args.dest)
    print(path)
    return 0
