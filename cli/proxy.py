"""``policyopt proxy --run RUN [--port 8000] [--host H] [--engine vllm|transformers]``.

An OpenAI-compatible chat-completions endpoint for agents, in front of the run's newest adapter version;
it records each session for ``finish_episode`` (``policyopt.workers.proxy``). It needs the service's
``REDIS_URL`` and its adapter store; ``--engine vllm`` samples with the vLLM at ``POLICYOPT_VLLM_URL``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from policyopt.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "proxy", help="OpenAI-compatible endpoint for agents that records their sessions for training"
    )
    parser.add_argument("--run", required=True, help="the run whose newest version answers")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default 8000; 0: any)")
    parser.add_argument("--host", default=None, help="listen address (default: POLICYOPT_HOST, 127.0.0.1)")
    parser.add_argument(
        "--engine",
        choices=("vllm", "transformers"),
        default="",
        help="sampling engine (default: the run's own; vllm needs POLICYOPT_VLLM_URL)",
    )
    parser.add_argument("--config", default=None, help="TOML settings file (env POLICYOPT_CONFIG)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policyopt.core.settings import load_settings

    settings = load_settings(args.config)
    if not settings.redis_url:
        print("error: REDIS_URL is unset; point it at the service's Redis/Valkey", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from policyopt.workers.proxy import serve_proxy

    serve_proxy(settings, args.run, engine=args.engine, host=args.host or "", port=args.port)
    return 0
