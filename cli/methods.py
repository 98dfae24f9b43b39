"""``policyopt methods``: every choice on each axis of the method library, and the presets."""

from __future__ import annotations

import argparse
import json

from policyopt.cli.common import Subparsers, client_from


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list method choices and presets")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        catalog = client.list_methods()
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
    return 0
