"""Where a worker's models run: the device, the dtype and torch's threads, chosen in one place.

The trainer, the transformers rollout engine and a local teacher all place their models with
``resolve_placement`` (from ``POLICYOPT_DEVICE``) and load them with ``load_model``/``load_causal_lm``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policyopt.core.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Placement:
    """A torch device and the dtype models are loaded in there."""

    device: torch.device
    dtype: torch.dtype


def _device(setting: str) -> torch.device:
    name = setting.strip().lower() or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidArgument(f"POLICYOPT_DEVICE={setting!r} is not auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition(
            f"POLICYOPT_DEVICE={setting!r} but torch sees no CUDA device; set POLICYOPT_DEVICE=cpu or auto"
        )
    return device


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bf16 matrix instructions: with them oneDNN runs bf16 GEMMs
4-5x faster than fp32 (measured on a 2-core avx512_bf16 VM: 750-950 against 170-215 GFLOP/s)."""


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16); False where unknown."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def _auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it and on a CPU with native bf16 matmuls (AMX, AVX512-BF16); fp32 elsewhere.

    A GPU without bf16 gets fp32, not fp16: fp16 LoRA training without loss scaling underflows its
    gradients. On the CPU bf16 halves the step; the LoRA weights and the optimizer stay fp32 (peft keeps
    adapters in fp32), and sampler and trainer both load through ``model_kwargs`` (eager attention), so
    their bf16 log-probs of the same tokens agree (tests/workers/engines/test_bf16_logprobs.py).
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """``device``: auto, cpu, cuda or cuda:N; ``dtype``: auto or float32/bfloat16/float16 (fp32/bf16/fp16).

    InvalidArgument for a value that names nothing; FailedPrecondition for CUDA on a machine without it.
    """
    target = _device(device)
    if dtype.strip().lower() in ("", "auto"):
        return Placement(target, _auto_dtype(target))
    if dtype.strip().lower() not in _DTYPES:
        raise InvalidArgument(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(sorted(_DTYPES))}")
    return Placement(target, _DTYPES[dtype.strip().lower()])


def configure_threads(torch_threads: int = 0) -> int:
    """Set torch's intra-op threads; 0 takes half the cores, since a trainer and a rollout worker share them."""
    threads = torch_threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    return threads


@functools.cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory(device: torch.device) -> None:
    """Hand memory freed on the CPU back to the system (glibc keeps it otherwise).

    Each training step frees its activations; without this a process that trains several runs holds
    the high-water mark of every step's allocation pattern as resident memory. A no-op off glibc and for
    CUDA tensors, whose caching allocator reuses freed blocks across runs.
    """
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is not None:
        trim(0)


def model_kwargs(placement: Placement) -> dict[str, object]:
    """``from_pretrained`` arguments for a model in this placement: its dtype, and eager attention in bf16
    on the CPU.

    There, torch's SDPA takes different kernels for the trainer's whole-sequence pass and the sampler's
    one-token decode, and their bf16 log-probs differ (KL ~0.002); with eager attention both run the same
    matmuls and agree exactly, and decode is faster (SDPA with a padding mask: 2.7 ms a call against 0.6).
    """
    kwargs: dict[str, object] = {"dtype": placement.dtype}
    if placement.device.type == "cpu" and placement.dtype == torch.bfloat16:
        kwargs["attn_implementation"] = "eager"
    return kwargs


class Bf16MatmulLinear(nn.Linear):
    """A bf16 ``nn.Linear`` between fp32 activations: the input is rounded to bf16 for the matmul (AMX), the
    output is returned in fp32.

    Why: a LoRA adds its small update to the base layer's output. In a plain bf16 model that output is
    already a bf16 number, so ``base + delta`` rounds straight back to it wherever the delta is below half a
    bf16 step (0.2-0.4 % of the value), and early LoRA updates barely change what the model samples. Here
    the sum stays fp32, and later roundings (the next matmul's input) land on either side of a value at
    random, so the update acts as in fp32. Measured on SmolLM2 with one Adam-like step: the advantage-weighted
    log-prob change was +0.012 in bf16, +0.028 with fp32 activations, +0.030 in fp32.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input.to(self.weight.dtype), self.weight, self.bias).float()


def uses_fp32_activations(placement: Placement) -> bool:
    """bf16 on the CPU: matmuls in bf16, the activations between them in fp32 (``Bf16MatmulLinear``).

    Not on CUDA yet: it has not been measured there (fp32 activations double a long sequence's
    activation memory in training).
    """
    return placement.device.type == "cpu" and placement.dtype == torch.bfloat16


def fp32_activations(model: nn.Module) -> int:
    """Turn every bf16 ``nn.Linear`` of ``model`` into a ``Bf16MatmulLinear`` (in place; weights unchanged).

    Call it before peft wraps the model: a LoRA layer keeps its base ``nn.Linear`` (converted) and adds its
    fp32 update to the fp32 output. Returns how many layers were converted.
    """
    converted = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.bfloat16:
            module.__class__ = Bf16MatmulLinear
            converted += 1
    return converted


def load_pretrained(model_dir: str | Path, placement: Placement) -> PreTrainedModel:
    """``from_pretrained`` with the placement's ``model_kwargs``, with fp32 activations where it uses them.

    Every model a worker trains or samples from loads here, so the trainer and the sampler compute alike;
    with fp32 activations their log-probs of the same tokens differ by rounding only (KL about 0.001 a token
    on SmolLM2, see tests/workers/engines/test_bf16_logprobs.py).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, **model_kwargs(placement))
    if uses_fp32_activations(placement):
        fp32_activations(model)
    return model


def load_causal_lm(model_dir: str | Path, placement: Placement) -> PreTrainedModel:
    """The causal LM in ``model_dir`` in the placement's dtype, on its device, in eval mode."""
    model = load_pretrained(model_dir, placement)
    model.to(placement.device)  # type: ignore[arg-type]
    model.eval()
    return model


def load_model(
    model_dir: str | Path, placement: Placement
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer for batched generation: a pad token (EOS when the model has none), left padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return load_causal_lm(model_dir, placement), tokenizer


__all__ = [
    "Bf16MatmulLinear",
    "Placement",
    "configure_threads",
    "cpu_has_native_bf16",
    "fp32_activations",
    "load_causal_lm",
    "load_model",
    "load_pretrained",
    "model_kwargs",
    "release_free_memory",
    "resolve_placement",
    "uses_fp32_activations",
]
