"""The whole RL step, side by side: policyopt's service against TRL's GRPOTrainer, same model and task.

    python bench/rl_step.py                       # SmolLM2-135M-Instruct, 20 steps each, seed 0
    python bench/rl_step.py --seeds 0-7           # both systems on 8 seeds, then means and standard errors
    python bench/rl_step.py --model tiny --steps 3  # a quick check on the random tiny Llama

Both systems train the same base model on the same task (the demo's: "add two numbers" for smollm2,
"reply with digits" for tiny; a deterministic reward computed from the completion text), with the same
prompts in the same order, the same group size, prompts per step, new tokens, temperature, LoRA (r16,
alpha 32, dropout 0 on q/k/v/o), learning rate and number of steps. They run one after the other, never
at the same time.

policyopt: the real service (``start_stack``: embedded Valkey, gRPC server, one rollout worker and one
trainer as separate processes), a ``RewardServer`` with the task's reward, a GRPO run, and prompts
submitted two steps ahead of the trainer as the demo does (all at once, the rollout worker runs ahead and
groups older than ``max_staleness`` are sampled twice). Models in bf16 where the CPU multiplies bf16
natively (AMX, AVX512-BF16) or on a bf16 GPU (``--dtype float32`` for fp32); TRL with its own default
``bf16=True`` (autocast) when policyopt runs in bf16, else ``bf16=False`` (``--trl-dtype`` to choose). TRL's
autocast covers its training forward only: accelerate wraps the peft model's ``forward``, and
``PeftModel.generate`` calls the inner model's, so TRL samples in fp32 either way (policyopt's CPU bf16
is bf16 matmuls between fp32 activations in sampler and trainer alike; see ``placement.Bf16MatmulLinear``).
The sampler/trainer KL printed is the median of the trainer's ``trajectory/mismatch_kl``: mostly staleness
(pipelining: ``trainer/staleness_mean`` is 1), plus about 0.001 from the sampler's decode and the trainer's
whole-sequence pass rounding a few bf16 values differently; the grpo preset's token-level truncated IS
corrects both. Step time is the wall time between consecutive STEP events (the first step, which
includes the workers loading the model, is reported apart); update time is the trainer's own
``trainer/step_seconds``. Rollouts overlap training (the service pipelines them; a group more than
``max_staleness`` versions old is resampled), so step time can be below generation + update.

TRL: ``GRPOTrainer`` with a peft ``LoraConfig`` in this process, one optimizer step = prompts x group
size completions. Step time is a callback's on_step_begin to on_step_end (generation, reward, forward,
backward, optimizer step); generation time is the time spent in ``GRPOTrainer._generate``; update time is
the step minus ``_generate_and_score_completions`` (generation, reward, advantages).

Per system: median seconds per step, completion tokens per second (tokens of the trained completions
over the wall time of the same steps), median update seconds per step, all over steps 2..N (step 1 holds
policyopt's model loading in its workers and TRL's first-call warm-up; it is printed apart), and the
reward gain from the mean of the first 5 steps to the mean of the last 5. Then policyopt/TRL step time.
Prints the load average before and after: the machine is shared and noisy.

One seed's reward gain is one draw: with 16 completions a step, a step's mean reward moves by about 0.07
from sampling alone, so one run's gain varies by about 0.04 between runs of the same seed. ``--seeds``
runs both systems on each seed (policyopt then TRL, the same prompts for both) and ends with the mean gain
of each, its standard error over seeds, and the mean of the per-seed differences.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyopt.cli.demo_task import TASKS, DemoTask, DigitsTask
from policyopt.core.types import JSONValue

FIRST_LAST = 5  # steps averaged at each end for the reward gain
AHEAD_STEPS = 2  # policyopt: prompts are submitted this many steps ahead of the trainer, as the demo does


@dataclass
class Figures:
    """What one system did, step by step."""

    step_seconds: list[float] = field(default_factory=list)
    update_seconds: list[float] = field(default_factory=list)
    generate_seconds: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    completion_tokens: list[float] = field(default_factory=list)
    mismatch_kl: list[float] = field(default_factory=list)
    step_metrics: list[dict[str, float]] = field(default_factory=list)
    first_step_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a model directory")
    parser.add_argument("--data-dir", default=str(Path.home() / ".policyopt"), help="where built models live")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        help="several seeds, e.g. '0-7' or '0,3,5': both systems on each, then a summary over seeds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="torch threads in all: TRL's one process gets them all, policyopt's rollout worker and "
        "trainer half each (they run at the same time)",
    )
    parser.add_argument("--only", choices=["policyopt", "trl"], help="run one side only")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="policyopt's POLICYOPT_DTYPE (auto: bf16 on a CPU with AMX/AVX512-BF16 or a bf16 GPU, else fp32)",
    )
    parser.add_argument(
        "--trl-dtype",
        choices=["same", "bf16", "fp32"],
        default="same",
        help="TRL's precision: same as policyopt's (default), bf16 (TRL's default, autocast) or fp32",
    )
    parser.add_argument(
        "--max-staleness", type=int, default=1, help="policyopt's run max_staleness (1: the default)"
    )
    parser.add_argument("--metrics-out", help="write policyopt's per-step metrics (JSON lines) here")
    return parser.parse_args(argv)


def make_prompts(task_name: str, n: int, seed: int) -> tuple[Any, list[str], list[dict[str, JSONValue]]]:
    """The task (the demo's for smollm2, the digits task otherwise) and its first ``n`` prompts."""
    task: DemoTask | DigitsTask = TASKS.get(task_name, DigitsTask)(seed=seed)
    prompts, metadata = task.prompts(n)
    return task, prompts, metadata


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def run_policyopt(
    args: argparse.Namespace,
    model_dir: Path,
    task: DemoTask | DigitsTask,
    prompts: list[str],
    metadata: list[dict[str, JSONValue]],
) -> Figures:
    from policyopt.cli.supervisor import start_stack
    from policyopt.client import Client, EventKind, RewardServer
    from policyopt.core.settings import Settings

    figures = Figures()
    key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="policyopt-bench-rl-") as work:
        settings = Settings(
            data_dir=str(Path(work) / "data"),
            port=0,
            http_port=0,
            api_keys={key: "bench"},
            model_roots=(str(model_dir.parent),),
            torch_threads=max(1, args.threads // 2),
            dtype=args.dtype,
            log_level="WARNING",
        )
        with (
            start_stack(settings, log_dir=Path(work) / "logs") as stack,
            RewardServer(task.score, batch=True) as endpoint,
        ):
            client = Client(stack.address, api_key=key)
            client.register_reward_endpoint("bench-task", endpoint.address)
            run = client.create_run(
                base_model=str(model_dir),
                method="grpo",
                reward_endpoint="bench-task",
                group_size=args.group_size,
                prompts_per_step=args.prompts_per_step,
                max_new_tokens=args.max_new_tokens,
                lora_rank=16,
                lora_alpha=32,
                learning_rate=args.learning_rate,
                temperature=args.temperature,
                max_steps=args.steps,
                max_staleness=args.max_staleness,
                seed=args.seed,
            )
            started = time.time()
            per_step = args.prompts_per_step

            submitted = [0]  # steps' worth of prompts submitted so far

            def feed(up_to_step: int) -> None:  # as the demo does: two steps of prompts ahead of the trainer
                start, end = submitted[0] * per_step, min(up_to_step, args.steps) * per_step
                if end > start:
                    run.submit_prompts(prompts[start:end], metadata=metadata[start:end])
                    submitted[0] = end // per_step

            feed(AHEAD_STEPS)
            step_times = [started]
            resampled = 0.0
            for event in run.watch():
                stack.check_alive()
                if event.kind == EventKind.STEP:
                    metrics = event.metrics
                    step_times.append(event.timestamp)
                    feed(len(step_times) - 1 + AHEAD_STEPS)
                    figures.update_seconds.append(metrics["trainer/step_seconds"])
                    figures.rewards.append(metrics.get("reward/mean", float("nan")))
                    length = metrics.get("trajectory/response_length_mean", float("nan"))
                    figures.completion_tokens.append(length * args.prompts_per_step * args.group_size)
                    resampled += metrics.get("trainer/groups_resampled_stale", 0.0)
                    figures.mismatch_kl.append(metrics.get("trajectory/mismatch_kl", float("nan")))
                    figures.step_metrics.append(dict(metrics))
                elif event.kind in (EventKind.ERROR, EventKind.WARNING):
                    figures.notes.append(f"[{event.kind}] {event.message}")
                elif event.kind == EventKind.STATUS and event.message.split(":")[0] in (
                    "failed",
                    "cancelled",
                ):
                    raise RuntimeError(f"policyopt run ended: {event.message}")
                if len(figures.rewards) >= args.steps:
                    break
            client.close()
    intervals = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    figures.first_step_seconds, figures.step_seconds = intervals[0], intervals[1:]
    figures.update_seconds = figures.update_seconds[1:]
    if resampled:
        figures.notes.append(f"{resampled:.0f} groups were resampled for staleness (generated twice)")
    return figures


def timed_method(trainer: Any, name: str, into: list[float]) -> None:
    """Wrap ``trainer.<name>`` so that each call's wall time is appended to ``into``."""
    original: Callable[..., Any] = getattr(trainer, name)

    def wrapper(*call_args: Any, **call_kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*call_args, **call_kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(trainer, name, wrapper)


def trl_config(args: argparse.Namespace, output_dir: str) -> Any:
    """GRPOConfig matched to policyopt's GRPO preset where TRL has the knob (see ``TRL_DEFAULTS_CHANGED``)."""
    import torch
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.prompts_per_step * args.group_size,
        num_generations=args.group_size,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        loss_type="grpo",
        beta=0.0,
        epsilon=0.2,
        scale_rewards="group",
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        shuffle_dataset=False,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=trl_bf16(args),
        seed=args.seed,
    )


TRL_DEFAULTS_CHANGED = (
    "loss_type dapo->grpo (seq-mean-token-mean, as policyopt's grpo), lr_scheduler linear->constant, "
    "gradient_checkpointing True->False, shuffle_dataset True->False (same order), logging_steps 10->1; "
    "kept (already equal): beta 0, epsilon 0.2, scale_rewards group, AdamW (0.9, 0.999, 1e-8), "
    "weight_decay 0, max_grad_norm 1, top_p 1, num_iterations 1, bf16 True when policyopt runs bf16 (autocast "
    "of TRL's training forward only: its generate runs fp32; policyopt's bf16 matmuls keep fp32 activations); "
    "differs: policyopt samples in a separate process, pipelined, and corrects the sampler/trainer gap with "
    "token TIS (cap 2); TRL samples with the model it trains, one phase after the other"
)


def run_trl(
    args: argparse.Namespace,
    model_dir: Path,
    task: DemoTask | DigitsTask,
    prompts: list[str],
    metadata: list[dict[str, JSONValue]],
) -> Figures:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    figures = Figures()
    generate_seconds: list[float] = []
    prepare_seconds: list[float] = []
    step_started: list[float] = []

    def reward(
        prompts: list[Any], completions: list[Any], answer: list[str], **kwargs: Any
    ) -> list[float | None]:
        scores: list[float | None] = []
        for prompt, completion, expected in zip(prompts, completions, answer, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            scores.extend(task.score(question, [text], {"answer": expected} if expected else {}))
        return scores

    class Collect(TrainerCallback):
        def on_step_begin(self, *cb_args: Any, **cb_kwargs: Any) -> None:
            step_started.append(time.perf_counter())

        def on_step_end(self, *cb_args: Any, **cb_kwargs: Any) -> None:
            figures.step_seconds.append(time.perf_counter() - step_started[-1])

        def on_log(self, *cb_args: Any, logs: dict[str, float] | None = None, **cb_kwargs: Any) -> None:
            if logs and "reward" in logs:
                figures.rewards.append(logs["reward"])
                figures.completion_tokens.append(
                    logs.get("completions/mean_length", float("nan"))
                    * args.prompts_per_step
                    * args.group_size
                )

    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in prompts],
            "answer": [str(m.get("answer", "")) for m in metadata],
        }
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    with tempfile.TemporaryDirectory(prefix="trl-bench-rl-") as work:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=trl_config(args, work),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Collect()],
        )
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts would bury the figures
        timed_method(trainer, "_generate", generate_seconds)
        timed_method(trainer, "_generate_and_score_completions", prepare_seconds)
        trainer.train()
    updates = [s - p for s, p in zip(figures.step_seconds, prepare_seconds, strict=False)]
    figures.first_step_seconds, figures.step_seconds = figures.step_seconds[0], figures.step_seconds[1:]
    figures.update_seconds, figures.generate_seconds = updates[1:], generate_seconds[1:]
    return figures


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def first_and_last(figures: Figures) -> tuple[int, float, float]:
    """k and the mean reward of the first k and the last k steps (k = FIRST_LAST, fewer on short runs)."""
    k = min(FIRST_LAST, max(1, len(figures.rewards) // 2))
    return k, mean(figures.rewards[:k]), mean(figures.rewards[-k:])


def report_side(name: str, figures: Figures) -> None:
    k, first, last = first_and_last(figures)
    # Steps 2..N only, for every figure but the reward: step 1 holds policyopt's model loading in the
    # workers and TRL's first-call warm-up.
    tokens, seconds = sum(figures.completion_tokens[1:]), sum(figures.step_seconds)
    print(
        f"{name:10s} step {median(figures.step_seconds):7.2f} s (median; first step {figures.first_step_seconds:.2f} s)"
        f" | {tokens / seconds:7.1f} completion tokens/s ({tokens:.0f} in {seconds:.1f} s)"
        f" | update {median(figures.update_seconds):6.2f} s/step"
        + (f" | generate {median(figures.generate_seconds):6.2f} s/step" if figures.generate_seconds else "")
        + f" | reward first {k} {first:.3f} -> last {k} {last:.3f} ({last - first:+.3f})"
        + (
            f" | sampler/trainer KL {median(figures.mismatch_kl):.4f} (median)" if figures.mismatch_kl else ""
        ),
        flush=True,
    )
    print(f"{'':10s} reward per step: {' '.join(f'{r:.3f}' for r in figures.rewards)}")
    for note in figures.notes[:5]:
        print(f"{'':10s} {note}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from policyopt.models import resolve_base_model

    model_dir = resolve_base_model(args.model, args.data_dir)
    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    print_header(args, model_dir, seeds)
    per_seed: dict[int, dict[str, Figures]] = {}
    for seed in seeds:
        args.seed = seed
        task, prompts, metadata = make_prompts(args.model, args.steps * args.prompts_per_step, seed)
        if len(seeds) > 1:
            print(f"## seed {seed}", flush=True)
        results: dict[str, Figures] = {}
        if args.only in (None, "policyopt"):
            results["policyopt"] = run_policyopt(args, model_dir, task, prompts, metadata)
            if args.metrics_out:
                lines = [json.dumps(m) for m in results["policyopt"].step_metrics]
                out = Path(args.metrics_out)
                out = out.with_name(f"{out.stem}.seed{seed}{out.suffix}") if len(seeds) > 1 else out
                out.write_text("\n".join(lines) + "\n")
            print(f"# policyopt done; {load()}", flush=True)
        if args.only in (None, "trl"):
            results["TRL"] = run_trl(args, model_dir, task, prompts, metadata)
            print(f"# TRL done; {load()}", flush=True)
        for name, figures in results.items():
            report_side(name, figures)
        if len(results) == 2:
            ratio = median(results["policyopt"].step_seconds) / median(results["TRL"].step_seconds)
            print(
                f"step time policyopt / TRL: {ratio:.2f} (median seconds per step; below 1: policyopt faster)"
            )
        per_seed[seed] = results
        print(f"# {load()}", flush=True)
    if len(seeds) > 1:
        report_seeds(per_seed)


def parse_seeds(text: str) -> list[int]:
    """'0-7' or '0,3,5' (or both: '0-3,9')."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def reward_gain(figures: Figures) -> float:
    _, first, last = first_and_last(figures)
    return last - first


def mean_and_error(values: list[float]) -> str:
    """Mean +- standard error of the mean."""
    if len(values) < 2:
        return f"{mean(values):+.3f}"
    return f"{mean(values):+.3f} +- {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def report_seeds(per_seed: dict[int, dict[str, Figures]]) -> None:
    """Per-seed gains and step times, then the means over seeds with their standard errors."""
    names = sorted({name for results in per_seed.values() for name in results}, reverse=True)
    print(f"# over {len(per_seed)} seeds; {load()}")
    print("seed " + "".join(f"| {name} gain  step s " for name in names))
    gains: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[float]] = {name: [] for name in names}
    for seed, results in per_seed.items():
        cells = []
        for name in names:
            figures = results[name]
            gains[name].append(reward_gain(figures))
            steps[name].append(median(figures.step_seconds))
            cells.append(f"| {gains[name][-1]:+.3f} {steps[name][-1]:7.2f} ")
        print(f"{seed:4d} " + "".join(cells))
    for name in names:
        print(
            f"{name:10s} reward gain {mean_and_error(gains[name])} (mean +- standard error over seeds), "
            f"median step {median(steps[name]):.2f} s"
        )
    if len(names) == 2:
        differences = [a - b for a, b in zip(gains["policyopt"], gains["TRL"], strict=True)]
        print(
            f"reward gain policyopt - TRL, per seed: {mean_and_error(differences)}; "
            f"step time policyopt / TRL: {median(steps['policyopt']) / median(steps['TRL']):.2f} "
            "(medians over seeds)"
        )


def print_header(args: argparse.Namespace, model_dir: Path, seeds: list[int]) -> None:
    task, _, _ = make_prompts(args.model, 1, seeds[0])
    print(
        f"# model {model_dir.name}; task: {task.description}; {args.steps} steps of {args.prompts_per_step} "
        f"prompts x {args.group_size} completions, {args.max_new_tokens} new tokens, temperature "
        f"{args.temperature}, LoRA r16 alpha 32 dropout 0 on q/k/v/o, learning rate {args.learning_rate:g}; "
        f"seeds {','.join(map(str, seeds))}"
    )
    print(
        f"# threads: policyopt {max(1, args.threads // 2)} per worker process (rollout and trainer, concurrent), "
        f"TRL {args.threads} in one process (generation then update); the two systems run one after the other"
    )
    from policyopt.workers.placement import resolve_placement

    print(
        f"# dtype: policyopt {resolve_placement('auto', args.dtype).dtype} (POLICYOPT_DTYPE={args.dtype}), "
        f"TRL {'bf16 autocast in training, fp32 generation' if trl_bf16(args) else 'fp32'} (bf16={trl_bf16(args)})"
    )
    print(
        "# policyopt: grpo preset (group mean/std advantages, PPO clip 0.2, seq-mean-token-mean, no KL, "
        "token TIS cap 2),"
    )
    print(
        "#   constant learning rate, AdamW wd 0, grad-norm clip 1, transformers rollouts pipelined with training"
    )
    print(f"# TRL {_trl_version()}: GRPOTrainer, defaults changed: {TRL_DEFAULTS_CHANGED}")
    print("# TRL update = step - _generate_and_score_completions (generation, reward, advantages)")
    print(
        "# seconds, tokens/s and update: steps 2..N (step 1 apart); reward: mean of first 5 vs last 5 steps"
    )
    print(f"# {load()}", flush=True)


def trl_bf16(args: argparse.Namespace) -> bool:
    """TRL's ``bf16`` flag: as asked, else whether policyopt's placement resolves to bf16."""
    if args.trl_dtype != "same":
        return bool(args.trl_dtype == "bf16")
    import torch

    from policyopt.workers.placement import resolve_placement

    return resolve_placement("auto", args.dtype).dtype == torch.bfloat16


def _trl_version() -> str:
    import trl

    return str(trl.__version__)


if __name__ == "__main__":
    main()
