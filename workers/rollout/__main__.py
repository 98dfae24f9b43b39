"""``python -m policyopt.workers.rollout``: one rollout worker, configured from the environment.

Reads REDIS_URL, POLICYOPT_DATA_DIR, POLICYOPT_TORCH_THREADS and the other settings (see README).
SIGTERM or SIGINT lets the prompts in hand finish (their groups are queued and the prompts acked), then exits 0.
"""

from __future__ import annotations

import logging

from policyopt.core.settings import load_settings
from policyopt.workers.rollout.service import serve_rollout


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_rollout(settings)


if __name__ == "__main__":
    main()
