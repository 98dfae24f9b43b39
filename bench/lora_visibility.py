"""How much of a LoRA update a model in each precision shows: fp32, plain bf16, bf16 with fp32 activations.

    python bench/lora_visibility.py                      # SmolLM2, learning rate 2e-4 and 1e-5, 10 steps
    python bench/lora_visibility.py --model tiny --steps 3

The same LoRA (r16, alpha 32 on q/k/v/o) sits on the same base model loaded three ways: fp32; plain bf16
(every activation rounded to bf16, as ``from_pretrained(dtype=bfloat16)`` gives); and policyopt's CPU bf16,
bf16 matmuls between fp32 activations (``placement.Bf16MatmulLinear``). On 16 completions of the demo
task sampled from the base model (4 prompts x 4), the script takes the fp32 model's policy gradient
(group-normalized advantages), then moves every LoRA weight of each model by the same Adam-like sign step
(``lr * sign(gradient)``, what Adam's first steps do) and prints, after each step, the advantage-weighted
mean change of the completions' log-probs that each model shows. fp32 is the reference.

Plain bf16 rounds ``base + delta`` back to the base output's bf16 value wherever the LoRA's delta is under
half a bf16 step, so a small update hardly changes its log-probs; a sampler in plain bf16 keeps drawing
from (nearly) the base model while the trainer's weights move. Prints the load average: the machine is
shared; the figures themselves do not depend on it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from policyopt.cli.demo_task import TASKS
from policyopt.models import resolve_base_model
from policyopt.workers.engines import SamplingParams
from policyopt.workers.engines.transformers_engine import TransformersEngine
from policyopt.workers.placement import load_pretrained, model_kwargs, resolve_placement

PRECISIONS = ("fp32", "bf16", "bf16 + fp32 activations")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="smollm2 (demo model), tiny, or a model directory")
    parser.add_argument("--data-dir", default=str(Path.home() / ".policyopt"), help="where built models live")
    parser.add_argument("--learning-rates", default="2e-4,1e-5", help="comma-separated sign-step sizes")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    return parser.parse_args()


def load(model_dir: Path, precision: str) -> nn.Module:
    placement = resolve_placement("cpu", "float32" if precision == "fp32" else "bfloat16")
    if precision == "bf16 + fp32 activations":
        base = load_pretrained(model_dir, placement)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, **model_kwargs(placement))  # type: ignore[arg-type]
    torch.manual_seed(0)  # the same LoRA A in every model
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(base, lora)


def completion_logps(model: nn.Module, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    out = []
    for prompt, completion in rows:
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        out.append(
            torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)
        )
    return out


def weighted_change(after: list[torch.Tensor], before: list[torch.Tensor], advantages: list[float]) -> float:
    """Mean over completions of advantage x (mean per-token log-prob change)."""
    terms = [a * float((x - y).mean()) for a, x, y in zip(advantages, after, before, strict=True)]
    return sum(terms) / len(terms)


def sample_completions(
    args: argparse.Namespace, model_dir: Path
) -> tuple[list[tuple[list[int], list[int]]], list[float]]:
    """16 completions of the task from the fp32 base model, and their group-normalized advantages."""
    task = TASKS.get(args.model, TASKS["tiny"])(seed=args.seed)
    prompts, metadata = task.prompts(4)
    engine = TransformersEngine(model_dir, device="cpu", dtype="float32")
    ids = [engine.encode_chat(p) for p in prompts]
    groups = engine.sample(ids, 4, SamplingParams(max_new_tokens=48, seed=args.seed))
    engine.close()
    rows, rewards = [], []
    for prompt_ids, prompt, meta, group in zip(ids, prompts, metadata, groups, strict=True):
        rewards.append(task.score(prompt, [s.text for s in group], meta))
        rows.extend((prompt_ids, s.completion_ids) for s in group)
    scores_P_G = torch.tensor(rewards)
    advantages_P_G = (scores_P_G - scores_P_G.mean(1, keepdim=True)) / (
        scores_P_G.std(1, keepdim=True) + 1e-4
    )
    print(f"# {args.model}: {len(rows)} completions, mean reward {float(scores_P_G.mean()):.3f}")
    return rows, advantages_P_G.flatten().tolist()


def sign_directions(
    model: nn.Module, rows: list[tuple[list[int], list[int]]], advantages: list[float]
) -> dict[str, torch.Tensor]:
    """The sign of the policy gradient of every LoRA weight (zero where the gradient is, as for LoRA A at B = 0)."""
    logps = completion_logps(model, rows)
    loss = -torch.stack([a * lp.mean() for a, lp in zip(advantages, logps, strict=True)]).mean()
    loss.backward()
    return {n: p.grad.sign() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    model_dir = resolve_base_model(args.model, args.data_dir)
    rows, advantages = sample_completions(args, model_dir)
    models = {precision: load(model_dir, precision) for precision in PRECISIONS}
    directions = sign_directions(models["fp32"], rows, advantages)
    with torch.no_grad():
        before = {precision: completion_logps(m, rows) for precision, m in models.items()}
    for lr in (float(x) for x in args.learning_rates.split(",")):
        print(f"\nlearning rate {lr:g}: advantage-weighted log-prob change after each sign step")
        print(
            "step | "
            + " | ".join(f"{p:>23s}" for p in PRECISIONS)
            + " | bf16 / fp32, fp32 activations / fp32"
        )
        for model in models.values():  # the fresh LoRA again: B = 0 (A never moved: its gradient was 0)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.zero_()
        for step in range(1, args.steps + 1):
            changes = {}
            for precision, model in models.items():
                with torch.no_grad():
                    for name, parameter in model.named_parameters():
                        if name in directions:
                            parameter -= lr * directions[name].to(parameter.dtype)
                    changes[precision] = weighted_change(
                        completion_logps(model, rows), before[precision], advantages
                    )
            shown = [changes[p] / changes["fp32"] for p in PRECISIONS[1:]]
            print(f"{step:4d} | " + " | ".join(f"{changes[p]:+23.5f}" for p in PRECISIONS)
                  + f" | {shown[0]:.2f}, {shown[1]:.2f}")  # fmt: skip
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
