"""``policyopt worker rollout`` / ``policyopt worker train``: one worker process against ``REDIS_URL``."""

from __future__ import annotations

import argparse
import logging
import sys

from policyopt.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run one rollout or trainer worker (needs REDIS_URL); under torchrun the trainer is data-parallel",
    )
    parser.add_argument(
        "role", choices=["rollout", "train"], help="rollout: sample and score; train: update and publish"
    )
    parser.add_argument("--config", default=None, help="TOML settings file (env POLICYOPT_CONFIG)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policyopt.core.settings import load_settings

    settings = load_settings(args.config)
    if not settings.redis_url:
        print(
            "error: REDIS_URL is unset. Workers share one Redis/Valkey with the server: set "
            "REDIS_URL=redis://HOST:PORT/0, or use `policyopt up` to start everything with an embedded Valkey.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.role == "rollout":
        from policyopt.workers.rollout.service import serve_rollout

        serve_rollout(settings)
    else:
        from policyopt.workers.train.service import serve_trainer

        serve_trainer(settings)
    return 0
