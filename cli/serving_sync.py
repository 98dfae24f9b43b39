"""``policyopt serving-sync --vllm URL [--vllm URL ...] [--run RUN] [--pin VERSION] [--pull-to DIR]
[--promoted-only]``.

Keeps vLLM endpoints on the newest adapter version (plus pinned ones) as the trainer publishes them;
see ``policyopt.workers.serving``. By default it needs the service's ``REDIS_URL`` and a vLLM that reads
the same adapter store (``POLICYOPT_ADAPTER_STORE`` / ``POLICYOPT_DATA_DIR``). With ``--pull-to DIR`` it
needs neither: it talks to the server (``--address``, ``--api-key``, ``--tls-*``), pulls each version
into ``DIR`` beside vLLM and loads it from there (``policyopt.workers.serving_pull``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable

from policyopt.cli.common import Subparsers, client_from


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serving-sync", help="keep vLLM endpoints on the newest adapter versions (plus pinned ones)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vllm",
        action="append",
        default=[],
        metavar="URL",
        help="a vLLM server (http://host:port) started with --enable-lora; repeat for replicas "
        "(default: POLICYOPT_VLLM_URL)",
    )
    parser.add_argument(
        "--run", default=None, help="follow this run only (default: every run that publishes)"
    )
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="VERSION",
        help="also keep this version loaded: N (with --run) or RUN@vN; repeatable",
    )
    parser.add_argument(
        "--max-loras",
        type=int,
        default=0,
        help="most adapters to keep loaded per endpoint (pins first); match vLLM's --max-cpu-loras. 0: no cap",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between full reconciles (restarted servers)"
    )
    parser.add_argument(
        "--pull-to",
        default=None,
        metavar="DIR",
        help="no shared storage: pull each version over gRPC (--address, --api-key) into DIR, a "
        "directory vLLM reads, and load it from there; follows --run, or every running run of the "
        "API key's tenant",
    )
    parser.add_argument(
        "--promoted-only",
        action="store_true",
        help="serve a version only once the run's promotion rule promotes it (after its held-out evaluation)",
    )
    parser.add_argument("--once", action="store_true", help="reconcile once and exit")


def run(args: argparse.Namespace) -> int:
    from policyopt.core.errors import InvalidArgument
    from policyopt.core.settings import load_settings
    from policyopt.state.connection import connect
    from policyopt.workers.serving import ServingSync

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    urls = args.vllm or list(settings.vllm_urls)
    if not urls:
        raise InvalidArgument("give at least one --vllm URL (or set POLICYOPT_VLLM_URL)")
    if args.pull_to:
        return _run_pulling(args, urls)
    sync = ServingSync(
        connect(settings),
        settings.adapter_root,
        urls,
        run_id=args.run,
        pins=args.pin,
        max_loras=args.max_loras,
        reconcile_interval_s=args.interval,
        promoted_only=args.promoted_only,
    )
    if args.once:
        sync.bootstrap()
        sync.reconcile()
        return 0
    return _until_signalled(sync.run_forever)


def _until_signalled(run_forever: Callable[[threading.Event], None]) -> int:
    """``run_forever(stop)`` until SIGTERM or SIGINT sets ``stop``."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    run_forever(stop)
    return 0


def _run_pulling(args: argparse.Namespace, urls: list[str]) -> int:
    from policyopt.workers.serving_pull import PullSync

    with client_from(args) as client:
        sync = PullSync(
            client,
            args.pull_to,
            urls,
            run_id=args.run,
            pins=args.pin,
            max_loras=args.max_loras,
            reconcile_interval_s=args.interval,
            promoted_only=args.promoted_only,
        )
        if args.once:
            sync.sync_once()
            return 0
        return _until_signalled(sync.run_forever)
