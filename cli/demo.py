"""`policyopt demo`: the whole service on embedded defaults, training a LoRA with GRPO on a built-in task.

It starts Valkey, the server and both workers as child processes, hosts the task's reward function
with the SDK's RewardServer, and drives the run through the public SDK, exactly as a product backend would.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from policyopt.cli.common import Subparsers
from policyopt.cli.demo_eval import EvalCurve, eval_every
from policyopt.cli.demo_task import TASKS, DemoTask, DigitsTask
from policyopt.cli.report import plot_rewards, sparkline
from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, EventKind, Promotion, RewardServer, RunHandle
from policyopt.core.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    model: str
    steps: int
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    learning_rate: float


# Sized so that the default run takes a few minutes on 2 CPU cores, and `--model tiny` about one. SmolLM2
# learns the task in about 30 steps at this learning rate; trained on, it settles on one correct but
# wordy reply for every prompt (constant partial credit, 0.424): entropy collapses and groups turn
# uniform, which the diagnostics rightly flag (measured: README, Methods, Diagnostics).
SIZES = {
    "smollm2": DemoSize(
        "smollm2", steps=30, group_size=6, prompts_per_step=4, max_new_tokens=12, learning_rate=1e-4
    ),
    "tiny": DemoSize(
        "tiny", steps=30, group_size=8, prompts_per_step=4, max_new_tokens=8, learning_rate=3e-2
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=sorted(SIZES),
        default="smollm2",
        help="smollm2: SmolLM2-135M-Instruct (a few minutes); tiny: a random tiny Llama (about 1 min)",
    )
    parser.add_argument("--steps", type=int, default=0, help="training steps (default depends on --model)")
    parser.add_argument("--method", default="grpo", help="method preset (see `policyopt methods`)")
    parser.add_argument("--out", default="", help="output directory (default: DATA_DIR/demo/<time>)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from policyopt.models import resolve_base_model  # imports torch: only when the demo runs

    size = SIZES[args.model]
    steps = args.steps or size.steps
    key = secrets.token_hex(16)
    # Free ports unless the user chose them, so the demo runs beside anything already on 50051 or 8080.
    http_port = None if "POLICYOPT_HTTP_PORT" in os.environ else 0
    settings: Settings = load_settings(port=0, http_port=http_port, api_keys={key: "demo"})
    out_dir = Path(args.out or Path(settings.data_dir) / "demo" / time.strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"policyopt demo: {args.model}, {steps} steps of {args.method}; output in {out_dir}")
    print("preparing the base model (converted to safetensors once, then cached) ...")
    resolve_base_model(size.model, settings.data_dir)
    task = TASKS[args.model](seed=args.seed)
    with (
        start_stack(settings, log_dir=out_dir / "logs") as stack,
        RewardServer(task.score, batch=True) as endpoint,
    ):
        client = Client(stack.address, api_key=key)
        client.register_reward_endpoint("demo-task", endpoint.address)
        eval_prompts, eval_metadata = task.eval_set()
        run_handle = client.create_run(
            base_model=size.model,  # a built-in name: the server allows no paths it was not told of
            method=args.method,
            reward_endpoint="demo-task",
            group_size=size.group_size,
            prompts_per_step=size.prompts_per_step,
            max_new_tokens=size.max_new_tokens,
            learning_rate=size.learning_rate,
            max_steps=steps,
            seed=args.seed,
            temperature=1.0,
            eval_prompts=eval_prompts,  # held out: the training stream never asks these
            eval_metadata=eval_metadata,
            eval_every=eval_every(steps),
            # sampled like training (4 per prompt): SmolLM2's greedy reply barely moves in 30 steps, while
            # what training changes is how often a sample is right (measured: greedy eval 0.319 at every version)
            eval_samples=4,
            eval_temperature=1.0,
            promotion=Promotion("beats_best"),
        )
        print(f"run {run_handle.run_id}: {task.description}")
        dashboard = stack.http_urls.get("server")
        if dashboard:  # the demo's key is made up per demo; the dashboard asks for it
            print(f"dashboard: {dashboard}/runs/{run_handle.run_id} (log in with API key {key})", flush=True)
        curve = EvalCurve()
        rewards = _drive(run_handle, task, steps, size, stack, curve)
        curve.wait_for_last(run_handle, len(rewards))
        adapter_dir = run_handle.pull_adapter("latest", out_dir / "adapter")
        client.close()
    _report(rewards, out_dir, adapter_dir, settings, run_handle.run_id, args)
    print(*curve.lines(rewards), sep="\n")
    return 0


def _drive(
    run_handle: RunHandle,
    task: DemoTask | DigitsTask,
    steps: int,
    size: DemoSize,
    stack: Stack,
    curve: EvalCurve,
) -> list[float]:
    """Keep two steps of prompts queued ahead of the trainer; collect the mean reward of each step."""
    from tqdm import tqdm

    rewards: list[float] = []
    submitted = 0

    def feed(up_to_step: int) -> None:
        nonlocal submitted
        while submitted < min(up_to_step, steps):
            prompts, metadata = task.prompts(size.prompts_per_step)
            run_handle.submit_prompts(prompts, metadata=metadata)
            submitted += 1

    feed(2)
    bar = tqdm(total=steps, unit="step", desc="training", dynamic_ncols=True)
    for event in run_handle.watch():
        stack.check_alive()
        if event.kind == EventKind.STEP:
            mean = float(event.metrics.get("reward/mean", float("nan")))
            rewards.append(mean)
            bar.update(1)
            bar.set_postfix(reward=f"{mean:.3f}", version=event.version)
            feed(event.step + 2)
        elif event.kind in (EventKind.ERROR, EventKind.WARNING):
            bar.write(f"[{event.kind}] {event.message}")
        elif (line := curve.observe(event)) is not None:
            bar.write(line)
        elif event.kind == EventKind.STATUS and event.message.split(":")[0] in (
            "completed",
            "failed",
            "cancelled",
        ):
            break
        if len(rewards) >= steps:
            break
    bar.close()
    return rewards


def _report(
    rewards: list[float],
    out_dir: Path,
    adapter_dir: Path,
    settings: Settings,
    run_id: str,
    args: argparse.Namespace,
) -> None:
    steps = list(range(1, len(rewards) + 1))
    png = plot_rewards(
        steps, rewards, out_dir / "reward_curve.png", f"policyopt demo: {args.method} on {args.model}"
    )
    k = max(1, len(rewards) // 4)
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    print()
    print(f"mean reward per step  {sparkline(rewards)}")
    print(f"first {k} steps: {first:.3f}   last {k} steps: {last:.3f}   change: {last - first:+.3f}")
    print(f"reward curve:         {png}")
    print(f"latest adapter (PEFT): {adapter_dir}")
    print(f"all versions:          {settings.adapter_root / run_id}")


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a LoRA with GRPO on a built-in task, on embedded defaults"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
