"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
import time

from policyopt.client import Client

# The object ``add_subparsers`` returns; argparse gives it no public name.
Subparsers = argparse._SubParsersAction


def client_from(args: argparse.Namespace) -> Client:
    """A Client for the global ``--address``, ``--api-key`` and ``--tls-*`` options."""
    return Client(
        args.address, api_key=args.api_key, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"
