"""The trained policy: a base model with a peft LoRA, on the device the settings pick."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import RunConfig
from policyopt.workers.models import resolve_base_model

log = logging.getLogger(__name__)

CRITIC_FILE = "critic.safetensors"


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def resolve_placement(device_setting: str) -> Placement:
    """``auto``: CUDA with bf16 when a GPU is present, else CPU fp32; ``cpu``/``cuda``/``cuda:N`` force it."""
    setting = device_setting.strip().lower() or "auto"
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise InvalidArgument(
            f"POLICYOPT_DEVICE={device_setting!r} is not auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgument(f"POLICYOPT_DEVICE={device_setting!r} but torch sees no CUDA device")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Placement(device, dtype)
    return Placement(device, torch.float32)


def configure_threads(torch_threads: int) -> int:
    """Set torch's intra-op threads; 0 takes half the cores, since a rollout worker shares the machine."""
    threads = torch_threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    return threads


def load_policy(config: RunConfig, data_dir: str, placement: Placement) -> tuple[PeftModel, int]:
    """Base model + a fresh LoRA (seeded by ``config.seed``), and the pad token id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_base_model(config.base_model, data_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=placement.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # LoRA A is random; seeding makes version 1 reproducible for a given run config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = get_peft_model(base, lora)
    model.to(placement.device)
    return model, int(pad_token_id)


def load_adapter_weights(model: PeftModel, version_dir: Path, device: torch.device) -> None:
    """Overwrite the LoRA weights with those of a published version."""
    weights = load_file(str(version_dir / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, weights)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise InvalidArgument(
            f"{version_dir} does not match the run's LoRA config: unexpected {unexpected[:3]}"
        )


def save_adapter(model: PeftModel, directory: Path) -> None:
    """Write adapter_config.json + adapter_model.safetensors (PEFT format) into ``directory``."""
    model.save_pretrained(str(directory), safe_serialization=True)
    (directory / "README.md").unlink(missing_ok=True)  # peft's model-card stub: not part of a version


def save_critic(critic: object, directory: Path) -> None:
    """Publish a critic (PPO's value head) beside the policy as ``critic.safetensors``, if there is one."""
    if isinstance(critic, torch.nn.Module):
        tensors = {k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}
        save_file(tensors, str(directory / CRITIC_FILE))


__all__ = [
    "CRITIC_FILE",
    "Placement",
    "configure_threads",
    "load_adapter_weights",
    "load_policy",
    "resolve_placement",
    "save_adapter",
    "save_critic",
]
