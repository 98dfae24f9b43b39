"""The trained policy: a base model with a peft LoRA, placed by ``policyopt.workers.placement``.

A trainer shares one base among runs (``base_pool``), each run a named adapter; versions are written in
peft's flat single-adapter layout whatever the adapter's name (``save_adapter``/``load_adapter_weights``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import RunConfig
from policyopt.models import ModelCatalog
from policyopt.workers.placement import Placement, load_pretrained

log = logging.getLogger(__name__)

CRITIC_FILE = "critic.safetensors"


def load_policy(config: RunConfig, placement: Placement, models: ModelCatalog) -> tuple[PeftModel, int]:
    """Base model + a fresh LoRA (seeded by ``config.seed``), and the pad token id.

    ``models`` resolves the run's ``base_model`` under the operator's declarations.
    """
    from transformers import AutoTokenizer

    model_dir = models.resolve(config.base_model)
    base = load_pretrained(model_dir, placement)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    lora = lora_config(config)
    # LoRA A is random; seeding makes version 1 reproducible for a given run config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = get_peft_model(base, lora)
    model.to(placement.device)
    return model, int(pad_token_id)


def lora_config(config: RunConfig) -> LoraConfig:
    """The run's LoRA as peft spells it."""
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def load_adapter_weights(
    model: PeftModel, version_dir: Path, device: torch.device, adapter_name: str = "default"
) -> None:
    """Overwrite adapter ``adapter_name``'s LoRA weights with those of a published version."""
    weights = load_file(str(version_dir / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise InvalidArgument(
            f"{version_dir} does not match the run's LoRA config: unexpected {unexpected[:3]}"
        )


def save_adapter(model: PeftModel, directory: Path, adapter_name: str = "default") -> None:
    """Write adapter ``adapter_name`` as adapter_config.json + adapter_model.safetensors into ``directory``.

    The layout and keys are peft's for a lone "default" adapter (``save_pretrained`` would put any other
    name in a subdirectory), so a version loads with ``PeftModel.from_pretrained`` and in vLLM as before.
    """
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config[adapter_name])
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path") or None
    config.inference_mode = True
    config.save_pretrained(str(directory))


def save_critic(critic: torch.nn.Module | None, directory: Path) -> None:
    """Publish a critic (PPO's value head) beside the policy as ``critic.safetensors``, if there is one."""
    if critic is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}
        save_file(tensors, str(directory / CRITIC_FILE))


__all__ = [
    "CRITIC_FILE",
    "load_adapter_weights",
    "load_policy",
    "lora_config",
    "save_adapter",
    "save_critic",
]
