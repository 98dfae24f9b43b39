"""``policyopt up``: embedded Valkey, the gRPC server, a rollout worker and a trainer, for local use.

A child that dies is restarted with backoff (``cli/supervision.py``); Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from policyopt.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "up", help="server, workers and embedded Valkey in one command (local use)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="gRPC port (env POLICYOPT_PORT, default 50051)"
    )
    parser.add_argument("--rollout-workers", type=int, default=1, help="number of rollout worker processes")
    parser.add_argument("--config", default=None, help="TOML settings file (env POLICYOPT_CONFIG)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policyopt.cli.supervisor import start_stack
    from policyopt.core.errors import Unavailable
    from policyopt.core.settings import load_settings
    from policyopt.state.connection import redact_url

    settings = load_settings(args.config, port=args.port)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    log_dir = Path(settings.data_dir) / "logs"
    stack_cm = start_stack(settings, log_dir=log_dir, rollout_workers=args.rollout_workers, supervise=True)
    with stack_cm as stack:
        redis_url = redact_url(stack.settings.redis_url or "")
        where = f"REDIS_URL={redis_url}" + (" (embedded Valkey)" if stack.valkey else "")
        print(f"policyopt is up on {stack.address}; {where}; logs in {log_dir}. Ctrl-C stops it.", flush=True)
        for name, url in stack.http_urls.items():
            what = "dashboard and metrics" if name == "server" else "metrics"
            print(f"  {name} {what}: {url}/" + ("" if name == "server" else "metrics"), flush=True)
        if not settings.api_keys:
            print("warning: POLICYOPT_API_KEYS is empty, so auth is off; set it before exposing the port.")
        while not stop.wait(1.0):
            try:
                stack.check_alive()
            except Unavailable as exc:
                print(f"error: {exc}")
                return 1
    return 0
