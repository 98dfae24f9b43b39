"""``python -m policyopt.workers.train``: one trainer worker, configured from the environment.

Reads REDIS_URL, POLICYOPT_DATA_DIR and the other settings (see README); POLICYOPT_TRAINER_LEASE_MS (Settings.trainer_lease_ms) sets
the run-lease time to live. SIGTERM or SIGINT finishes or abandons the current step cleanly, releases the
run leases and exits 0.
"""

from __future__ import annotations

import logging

from policyopt.core.settings import load_settings
from policyopt.workers.train.service import serve_trainer


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_trainer(settings)


if __name__ == "__main__":
    main()
