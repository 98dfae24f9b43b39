"""``policyopt serve``: the gRPC server alone, against the Redis at ``REDIS_URL``."""

from __future__ import annotations

import argparse
import logging
import sys

from policyopt.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the gRPC server (production shape; needs REDIS_URL)")
    parser.add_argument(
        "--port", type=int, default=None, help="listen port (env POLICYOPT_PORT, default 50051; 0: any)"
    )
    parser.add_argument("--host", default=None, help="listen address (env POLICYOPT_HOST, default 127.0.0.1)")
    parser.add_argument("--config", default=None, help="TOML settings file (env POLICYOPT_CONFIG)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policyopt.core.settings import load_settings

    settings = load_settings(args.config, port=args.port, host=args.host)
    if not settings.redis_url:
        print(
            "error: REDIS_URL is unset. `policyopt serve` runs the server alone against a shared Redis/Valkey; "
            "set REDIS_URL=redis://HOST:PORT/0, or use `policyopt up` to start the server, the workers and "
            "an embedded Valkey together.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from policyopt.server.app import serve

    serve(settings)
    return 0
