"""``policyopt methods``: every choice on each axis of the method library, and the presets.

It asks the server (``ListMethods``: what that server's version offers). With ``--local``, or when no
server answers at ``--address``, it lists this installation's own catalog instead, so a newcomer can
discover the methods before starting anything.
"""

from __future__ import annotations

import argparse
import json
import sys

from policyopt.cli.common import Subparsers, client_from
from policyopt.client import errors
from policyopt.client.types import MethodCatalog, MethodChoiceInfo, MethodParameter, PresetInfo


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "methods", help="list method choices and presets (the local catalog when no server answers)"
    )
    parser.add_argument(
        "--local", action="store_true", help="list this installation's catalog without asking a server"
    )
    parser.set_defaults(func=run)


def local_catalog() -> MethodCatalog:
    """This installation's method library, in the SDK's types (what ListMethods would return)."""
    from policyopt.workers.algorithms import list_methods

    choices, presets = list_methods()
    return MethodCatalog(
        choices=tuple(
            MethodChoiceInfo(
                c.axis,
                c.name,
                c.rationale,
                tuple(MethodParameter(p.name, str(p.type), str(p.default), p.doc) for p in c.parameters),
            )
            for c in choices
        ),
        presets=tuple(PresetInfo(p.name, p.description, p.reward_side, p.trajectory_side) for p in presets),
    )


def fetch_catalog(args: argparse.Namespace) -> MethodCatalog:
    """The server's catalog; the local one with ``--local`` or when the server is unreachable."""
    if getattr(args, "local", False):
        return local_catalog()
    try:
        with client_from(args) as client:
            return client.list_methods()
    except (errors.Unavailable, errors.DeadlineExceeded):
        print(
            f"# no server answers at {args.address}: listing this installation's methods "
            "(a server of another version may offer others)",
            file=sys.stderr,
        )
        return local_catalog()


def print_catalog(catalog: MethodCatalog) -> None:
    """Presets (with their settings), then each axis's choices with their parameters."""
    print("Presets:")
    for preset in catalog.presets:
        print(f"  {preset.name}: {preset.description}")
        for side, values in (
            ("reward_side", preset.reward_side),
            ("trajectory_side", preset.trajectory_side),
        ):
            if values:
                print(f"      {side}: {json.dumps(values, sort_keys=True)}")
    axis = ""
    for choice in catalog.choices:
        if choice.axis != axis:
            axis = choice.axis
            print(f"\n{axis}:")
        print(f"  {choice.name}: {choice.rationale}")
        for p in choice.parameters:
            print(f"      {p.name} ({p.type}, default {p.default}): {p.doc}")


def run(args: argparse.Namespace) -> int:
    print_catalog(fetch_catalog(args))
    return 0
