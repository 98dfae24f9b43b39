#!/usr/bin/env bash
# The CUDA path, measured on one machine with NVIDIA GPUs (it has not run in CI: CI has no GPU).
#   bash scripts/gpu_check.sh              # MODEL=tiny|smollm2 (smollm2 needs .[all]), STEPS=4, PORT=50061
# 1. `policyopt up` with POLICYOPT_DEVICE=cuda (bf16 where the GPU has it): two runs at once through the SDK.
# 2. With 2+ GPUs: the trainer under `torchrun --nproc-per-node 2` beside `policyopt serve` and a rollout worker.
# 3. With vLLM installed: vLLM on the GPU serving the rollouts (engine="vllm").
# Each part prints the seconds between adapter versions (one optimizer step each) per run.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-tiny}"
STEPS="${STEPS:-4}"
PORT="${PORT:-50061}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/policyopt-gpu-check.XXXXXX")"
export POLICYOPT_DEVICE=cuda POLICYOPT_HTTP_PORT=0 POLICYOPT_ENDPOINT_ALLOWLIST=loopback POLICYOPT_LOG_LEVEL=WARNING
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

start() {  # LOG COMMAND...: run in the background, remember its pid
  local log="$1"
  shift
  "$@" >"$WORK/$log" 2>&1 &
  PIDS+=("$!")
}

stop_all() {
  cleanup
  PIDS=()
}

wait_healthy() {  # PORT: until the server's gRPC health says SERVING (the image's health check)
  for _ in $(seq 1 300); do
    if POLICYOPT_PORT="$1" POLICYOPT_HTTP_PORT=-1 python deploy/docker/healthcheck.py; then
      return 0
    fi
    sleep 1
  done
  echo "server on port $1 never became healthy; logs in $WORK" >&2
  return 1
}

drive() {  # LABEL ENGINE: two runs through the SDK, seconds between versions
  python - "127.0.0.1:$PORT" "$1" "$2" "$MODEL" "$STEPS" <<'PY'
import statistics
import sys
import threading
import time

from policyopt.client import Client, RewardServer

address, label, engine, model, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])


def score(prompt: str, completion: str, metadata: dict) -> float:
    return min(len(completion), 40) / 40.0


def follow(run, name: str, out: dict) -> None:
    times = [time.monotonic()]
    for version in range(1, steps + 1):
        run.wait_for_version(version, timeout=1800)
        times.append(time.monotonic())
    out[name] = [b - a for a, b in zip(times, times[1:])]


with RewardServer(score) as endpoint, Client(address) as client:
    client.register_reward_endpoint("length", endpoint.address)
    runs = {}
    for name in ("a", "b"):
        runs[name] = client.create_run(
            base_model=model, method="grpo", reward_endpoint="length", engine=engine,
            group_size=8, prompts_per_step=8, max_new_tokens=64, learning_rate=1e-4,
        )
        prompts = [f"Count to {i} in words." for i in range(8 * steps)]
        runs[name].submit_prompts(prompts, metadata=[{} for _ in prompts])
    seconds: dict = {}
    threads = [threading.Thread(target=follow, args=(run, n, seconds)) for n, run in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in sorted(seconds):
        steps_s = " ".join(f"{s:.2f}" for s in seconds[name])
        print(f"[{label}] run {name}: step seconds {steps_s} (median after the first: "
              f"{statistics.median(seconds[name][1:] or seconds[name]):.2f})")
PY
}

echo "== machine"
nvidia-smi -L
GPUS="$(nvidia-smi -L | wc -l)"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"

echo "== 1. policyopt up on CUDA, two runs ($MODEL)"
start up.log env POLICYOPT_DATA_DIR="$WORK/up" policyopt up --port "$PORT"
wait_healthy "$PORT"
drive "up cuda" transformers
stop_all

if [ "$GPUS" -ge 2 ]; then
  echo "== 2. torchrun trainer, 2 processes on 2 GPUs"
  export POLICYOPT_DATA_DIR="$WORK/ddp"
  mkdir -p "$POLICYOPT_DATA_DIR"
  start valkey.log python -c '
import signal, sys, time
from policyopt.core.valkey import EmbeddedValkey
server = EmbeddedValkey(sys.argv[1], port=int(sys.argv[2]))
server.start()
signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
while True:
    time.sleep(3600)
' "$POLICYOPT_DATA_DIR/valkey" 56379
  export REDIS_URL=redis://127.0.0.1:56379/0
  sleep 3
  start serve.log policyopt serve --port "$PORT"
  start rollout.log policyopt worker rollout
  start trainer.log torchrun --standalone --nproc-per-node 2 -m policyopt.cli.main worker train
  wait_healthy "$PORT"
  drive "torchrun x2" transformers
  stop_all
  unset REDIS_URL POLICYOPT_DATA_DIR
else
  echo "== 2. skipped: $GPUS GPU(s), torchrun needs 2"
fi

if python -c "import vllm" 2>/dev/null; then
  echo "== 3. vLLM on the GPU serving the rollouts"
  export POLICYOPT_DATA_DIR="$WORK/vllm"
  MODEL_DIR="$(python -c 'import sys; from policyopt.models.resolve import resolve_base_model; print(resolve_base_model(sys.argv[1], sys.argv[2]))' "$MODEL" "$POLICYOPT_DATA_DIR")"
  start vllm.log env VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server \
    --model "$MODEL_DIR" --served-model-name base --host 127.0.0.1 --port 8011 \
    --enable-lora --max-lora-rank 16 --max-loras 4 --logprobs-mode processed_logprobs \
    --gpu-memory-utilization 0.4
  for _ in $(seq 1 300); do
    if python -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8011/health", timeout=2)' 2>/dev/null; then
      break
    fi
    sleep 2
  done
  start up-vllm.log env POLICYOPT_VLLM_URL=http://127.0.0.1:8011 policyopt up --port "$PORT"
  wait_healthy "$PORT"
  drive "vllm rollouts" vllm
  stop_all
else
  echo "== 3. skipped: vLLM is not installed (pip install -e '.[vllm]')"
fi
echo "logs: $WORK"
