#!/usr/bin/env bash
# Installs the project with its test extras and runs lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m ruff check .
python -m ruff format --check .
python tools/typecheck.py
python -m pytest -q -rs --durations=15 "$@"
