"""Policy update step: ours vs TRL's GRPOTrainer loss, forward + backward on the same model and batch.

    python bench/update_step.py                       # CPU fp32, a small Llama with a 32k vocabulary
    python bench/update_step.py --device cuda --dtype bf16 --layers 8 --hidden 1024

Both sides get the same LoRA model, the same groups and the same advantages (GRPO, seq-mean-token-mean,
PPO clip, beta 0): ours is ``PolicyUpdater.prepare`` + ``accumulate_gradients``; TRL's is
``GRPOTrainer.compute_loss`` + ``backward`` on the padded batch its generation step would build (TRL
pads prompts left and completions right). Their LoRA gradients are compared first, so the timing compares
the same computation. Timed side by side (alternating), median of ``--repeats``. Peak memory of one
forward+backward is measured in a fresh subprocess per side (CUDA: max_memory_allocated; CPU: the peak-RSS
high-water mark, reset just before the step after malloc_trim). The update's FLOP/s (FlopCounterMode, matmul/attention FLOPs
actually executed) is reported against this machine's matmul peak in the same dtype, measured in this run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from policyopt.core.types import MethodChoice, Trajectory, TrajectoryGroup
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.train.update import PolicyUpdater

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads on CPU; 0 keeps torch's default"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompt-len", default="32:96", help="min:max prompt tokens")
    parser.add_argument("--completion-len", default="16:160", help="min:max completion tokens")
    parser.add_argument(
        "--micro-batch-size", type=int, default=4, help="ours; TRL runs the whole batch at once"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-only", choices=["ours", "trl"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> PeftModel:
    torch.manual_seed(0)
    heads = max(1, args.hidden // 64)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    base = LlamaForCausalLM(config)
    base.to(device=args.device, dtype=DTYPES[args.dtype])  # type: ignore[call-arg]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, lora)
    model.train()
    return model


def make_groups(args: argparse.Namespace) -> list[TrajectoryGroup]:
    rng = torch.Generator().manual_seed(1)
    p_lo, p_hi = (int(x) for x in args.prompt_len.split(":"))
    c_lo, c_hi = (int(x) for x in args.completion_len.split(":"))
    groups = []
    for p in range(args.prompts):
        prompt = torch.randint(
            3, args.vocab, (int(torch.randint(p_lo, p_hi + 1, (1,), generator=rng)),), generator=rng
        )
        trajectories = []
        for _ in range(args.group_size):
            n = int(torch.randint(c_lo, c_hi + 1, (1,), generator=rng))
            ids = torch.randint(3, args.vocab, (n,), generator=rng).tolist()
            trajectories.append(Trajectory(ids, [-1.0] * n, reward=float(torch.rand(1, generator=rng))))
        groups.append(TrajectoryGroup("bench", f"g{p}", f"p{p}", "", prompt.tolist(), trajectories, 0))
    return groups


def build_ours(
    model: PeftModel, args: argparse.Namespace, groups: list[TrajectoryGroup]
) -> tuple[Callable[[], None], Any]:
    # TRL has no sampler/trainer correction without vLLM, and the bench's sampler log-probs are made up:
    # the grpo preset's token TIS is turned off so that both sides compute the same gradient.
    spec = resolve_method(MethodChoice(preset="grpo", trajectory_side={"mismatch_correction": "none"}))
    updater = PolicyUpdater(
        model,
        spec,
        learning_rate=1e-5,
        pad_token_id=0,
        device=args.device,
        micro_batch_size=args.micro_batch_size,
    )

    def run() -> None:
        model.zero_grad(set_to_none=True)
        prepared = updater.prepare(groups)
        updater.accumulate_gradients(prepared, list(range(prepared.batch.size)))

    return run, updater


def trl_inputs(
    groups: list[TrajectoryGroup], advantages_B: torch.Tensor, device: str
) -> dict[str, torch.Tensor]:
    """The padded batch TRL's generation step hands to compute_loss (prompts left-, completions right-padded)."""
    prompts = [g.prompt_ids for g in groups for _ in g.trajectories]
    completions = [t.completion_ids for g in groups for t in g.trajectories]
    P, C = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.zeros(len(prompts), P, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.zeros(len(prompts), C, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        prompt_ids[i, P - len(prompt) :], prompt_mask[i, P - len(prompt) :] = torch.tensor(prompt), 1
        completion_ids[i, : len(completion)], completion_mask[i, : len(completion)] = (
            torch.tensor(completion),
            1,
        )
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages_B,
        "num_items_in_batch": completion_mask.sum(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def build_trl(
    model: PeftModel, args: argparse.Namespace, groups: list[TrajectoryGroup], advantages_B: torch.Tensor
) -> Callable[[], None]:
    """A GRPOTrainer constructed offline (no hub: a word-level tokenizer, a dummy dataset and reward)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2}, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="</s>",
    )
    size = args.prompts * args.group_size
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=size,
        num_generations=args.group_size,
        max_completion_length=max(len(t.completion_ids) for g in groups for t in g.trajectories),
        loss_type="grpo",
        beta=0.0,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16",
        report_to="none",
    )

    def zero_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
        return [0.0] * len(completions)

    dataset = Dataset.from_dict({"prompt": ["x"] * size})
    trainer = GRPOTrainer(
        model=model, reward_funcs=zero_reward, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we bypass
    inputs = trl_inputs(groups, advantages_B, args.device)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, inputs).backward()

    return run


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run: Callable[[], None], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def lora_grads(model: PeftModel) -> list[torch.Tensor]:
    return [
        p.grad.detach().float().clone() for p in model.parameters() if p.requires_grad and p.grad is not None
    ]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_memory_of(run: Callable[[], None], device: str) -> float:
    """Extra memory (MiB) one call of ``run`` needs at its peak, over what was held before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS counts live memory only
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak-RSS high-water mark (VmHWM)
    before = _rss_kib("VmRSS")
    run()
    return (_rss_kib("VmHWM") - before) / 1024


def measure_memory_in_subprocess(side: str) -> float:
    argv = [a for a in sys.argv[1:]] + ["--memory-only", side]
    output = subprocess.run(
        [sys.executable, __file__, *argv], check=True, capture_output=True, text=True
    ).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_mib"])


def matmul_peak_flops(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best achieved FLOP/s of a square matmul in ``dtype`` on ``device``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def multiply() -> None:
        torch.mm(a, b)

    best = min(timed(multiply, device) for _ in range(repeats))
    return 2 * size**3 / best


def count_flops(run: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def setup(
    args: argparse.Namespace,
) -> tuple[PeftModel, Callable[[], None], Callable[[], None], list[TrajectoryGroup]]:
    model = build_model(args)
    groups = make_groups(args)
    ours, updater = build_ours(model, args, groups)
    prepared = updater.prepare(groups)
    advantages_B = (prepared.advantages_B_T * prepared.mask_B_T).sum(-1) / prepared.mask_B_T.sum(-1).clamp(
        min=1
    )
    trl = build_trl(model, args, groups, advantages_B.detach())
    return model, ours, trl, groups


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ours, trl, groups = setup(args)
    if args.memory_only:
        (ours if args.memory_only == "ours" else trl)()  # warm-up: lazy allocations, autotuning
        print(
            json.dumps({"peak_mib": peak_memory_of(ours if args.memory_only == "ours" else trl, args.device)})
        )
        return
    ours()
    ours_grads = lora_grads(model)
    trl()
    trl_grads = lora_grads(model)
    scale = max(float(g.abs().max()) for g in trl_grads)
    difference = max(float((a - b).abs().max()) for a, b in zip(ours_grads, trl_grads, strict=True))
    times: dict[str, list[float]] = {"ours": [], "trl": []}
    for _ in range(args.repeats):
        times["ours"].append(timed(ours, args.device))
        times["trl"].append(timed(trl, args.device))
    median = {side: statistics.median(values) for side, values in times.items()}
    memory = {side: measure_memory_in_subprocess(side) for side in ("ours", "trl")}
    flops = {"ours": count_flops(ours), "trl": count_flops(trl)}
    peak = matmul_peak_flops(args.device, DTYPES[args.dtype])
    report(args, groups, difference / scale, median, memory, flops, peak)


def report(
    args: argparse.Namespace,
    groups: list[TrajectoryGroup],
    gradient_error: float,
    median: dict[str, float],
    memory: dict[str, float],
    flops: dict[str, int],
    peak: float,
) -> None:
    trajectories = [(len(g.prompt_ids), len(t.completion_ids)) for g in groups for t in g.trajectories]
    real = sum(p + c for p, c in trajectories)
    padded = len(trajectories) * (max(p for p, _ in trajectories) + max(c for _, c in trajectories))
    speedup = median["trl"] / median["ours"]
    print(
        f"device {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(
        f"model: Llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, LoRA r16 on q/k/v/o; "
        f"batch {len(trajectories)} sequences = {args.prompts} prompts x {args.group_size}, "
        f"{real} real tokens ({sum(c for _, c in trajectories)} completion), {padded} in TRL's padded batch"
    )
    print(
        "TRL: GRPOTrainer built offline (word-level tokenizer, dummy dataset/reward); compute_loss + backward"
    )
    print("     called directly on the padded batch its generation step builds (loss_type=grpo, beta=0).")
    print(f"LoRA gradients, ours vs TRL: max |difference| / max |gradient| = {gradient_error:.2e}")
    print(f"{'':24s}{'ours':>12s}{'TRL':>12s}")
    print(
        f"{'fwd+bwd median (s)':24s}{median['ours']:12.3f}{median['trl']:12.3f}   speedup {speedup:.2f}x (target >= 1.4x)"
    )
    print(
        f"{'peak memory (MiB)':24s}{memory['ours']:12.1f}{memory['trl']:12.1f}   ratio {memory['ours'] / max(memory['trl'], 1e-9):.2f}"
    )
    print(f"{'executed GFLOP':24s}{flops['ours'] / 1e9:12.1f}{flops['trl'] / 1e9:12.1f}")
    achieved = {side: flops[side] / median[side] for side in ("ours", "trl")}
    print(f"{'GFLOP/s':24s}{achieved['ours'] / 1e9:12.1f}{achieved['trl'] / 1e9:12.1f}")
    print(
        f"{'fraction of matmul peak':24s}{achieved['ours'] / peak:12.1%}{achieved['trl'] / peak:12.1%}"
        f"   (peak {peak / 1e9:.1f} GFLOP/s, 2048^3 {args.dtype} matmul, this run)"
    )
    met = speedup >= 1.4 and memory["ours"] <= memory["trl"]
    print(f"target (>= 1.4x faster, no more peak memory): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
