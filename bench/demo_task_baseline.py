"""Reward distribution of the demo task on the base model, and rollout generation time.

    python bench/demo_task_baseline.py [--model smollm2] [--prompts 32] [--group-size 6] [--max-new-tokens 12]

Prints the mean reward, how often each reward value occurs, the share of groups whose rewards differ
(GRPO learns nothing from a group with zero variance), and the time to sample
4 prompts x group 4 x 32 new tokens in one batch and prompt by prompt.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

from policyopt.cli.demo_task import DemoTask
from policyopt.models import resolve_base_model
from policyopt.workers.engines import SamplingParams
from policyopt.workers.engines.transformers_engine import TransformersEngine
from policyopt.workers.placement import configure_threads


def reward_distribution(engine: TransformersEngine, args: argparse.Namespace) -> None:
    task = DemoTask(seed=args.seed)
    prompts, metadata = task.prompts(args.prompts)
    ids = [engine.encode_chat(p) for p in prompts]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, seed=args.seed)
    start = time.perf_counter()
    groups = engine.sample(ids, args.group_size, params)
    elapsed = time.perf_counter() - start
    rewards_P_G = [
        task.score(p, [s.text for s in g], m) for p, g, m in zip(prompts, groups, metadata, strict=True)
    ]
    flat = [r for row in rewards_P_G for r in row]
    counts = collections.Counter(flat)
    varied = sum(1 for row in rewards_P_G if len(set(row)) > 1)
    print(f"{len(flat)} completions ({args.prompts} prompts x {args.group_size}), {args.max_new_tokens} new tokens, "
          f"sampled in {elapsed:.1f}s")  # fmt: skip
    print(f"mean reward {statistics.mean(flat):.3f}  std {statistics.pstdev(flat):.3f}")
    print("reward counts: " + ", ".join(f"{k:g}: {counts[k]}" for k in sorted(counts)))
    print(f"groups with reward variance: {varied}/{len(rewards_P_G)}")
    for group in groups[:3]:
        print("  e.g. " + " | ".join(repr(s.text) for s in group[:3]))


def generation_time(engine: TransformersEngine) -> None:
    prompts = [engine.encode_chat(f"What is {a} + {b}? Reply with just the number.") for a, b in DemoPairs]
    params = SamplingParams(max_new_tokens=32, seed=0)
    engine.sample(prompts[:1], 1, SamplingParams(max_new_tokens=2))  # warm up
    start = time.perf_counter()
    batched = engine.sample(prompts, 4, params)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    for p in prompts:
        engine.sample([p], 4, params)
    serial_s = time.perf_counter() - start
    tokens = sum(len(s.completion_ids) for g in batched for s in g)
    print(f"4 prompts x group 4 x 32 new tokens: {batched_s:.2f}s in one batch ({tokens} tokens), "
          f"{serial_s:.2f}s prompt by prompt")  # fmt: skip


DemoPairs = [(3, 4), (12, 9), (15, 17), (8, 20)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny or a model directory")
    parser.add_argument(
        "--data-dir", default="", help="where converted models are cached (default: a temp dir)"
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = half the cores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    model_dir = resolve_base_model(args.model, args.data_dir or tempfile.mkdtemp(prefix="policyopt-bench-"))
    print(f"model {model_dir}, {threads} torch threads")
    engine = TransformersEngine(model_dir, device="cpu")
    reward_distribution(engine, args)
    generation_time(engine)


if __name__ == "__main__":
    main()
