"""The ``policyopt`` command. Each subcommand lives in a small module with a ``register`` function.

Adding a subcommand: write ``cli/NAME.py`` with ``register(subparsers)`` (which calls
``subparsers.add_parser`` and ``set_defaults(func=...)``), and add it to ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from policyopt.cli import adapters, demo, methods, proxy, runs, serve, serving_sync, up, worker
from policyopt.cli.common import Subparsers
from policyopt.core.errors import PolicyOptError

COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    demo.register,
    up.register,
    serve.register,
    worker.register,
    runs.register,
    adapters.register,
    methods.register,
    serving_sync.register,
    proxy.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyopt", description="Fine-tune LLMs with RL over gRPC.")
    parser.add_argument(
        "--address",
        default=os.environ.get("POLICYOPT_ADDRESS", "127.0.0.1:50051"),
        help="server host:port for client commands (env POLICYOPT_ADDRESS)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("POLICYOPT_API_KEY"),
        help="API key for client commands (env POLICYOPT_API_KEY)",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("POLICYOPT_TLS_CA") or None,
        help="connect over TLS, verifying the server with this PEM CA file (env POLICYOPT_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("POLICYOPT_TLS_CLIENT_CERT") or None,
        help="client certificate (PEM file) for servers that require mutual TLS; with --tls-key "
        "(env POLICYOPT_TLS_CLIENT_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=os.environ.get("POLICYOPT_TLS_CLIENT_KEY") or None,
        help="private key (PEM file) of --tls-cert (env POLICYOPT_TLS_CLIENT_KEY)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except PolicyOptError as exc:
        print(f"error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
