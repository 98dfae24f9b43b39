"""One frozen base model per (model directory, dtype) in a trainer, shared by its runs as named LoRA adapters.

Each run is an adapter of the base's ``PeftModel`` (``adapter_name``); the trainer ``set_adapter``s it
before the run's step, so only that adapter's parameters require grad. A base is dropped when its last
adapter is. Memory figures are tensor sizes (``tensor_bytes``), for the trainer's memory budget.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import RunConfig
from policyopt.models import ModelCatalog
from policyopt.workers.placement import Placement, load_pretrained
from policyopt.workers.train import policy

log = logging.getLogger(__name__)


def adapter_name(run_id: str) -> str:
    """A valid ``nn.ModuleDict`` key (no dots) unique to the run: ``run-0a1b...`` -> ``run_0a1b...``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", run_id)


def tensor_bytes(value: object) -> int:
    """Bytes of every tensor in ``value`` (tensors, modules, and nested dicts/lists/tuples of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, nn.Module):  # tied weights count once
        unique = {t.data_ptr(): t for t in (*value.parameters(), *value.buffers())}
        return sum(tensor_bytes(t) for t in unique.values())
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


@dataclass
class SharedBase:
    """A loaded base model with the adapters of the runs that use it."""

    key: tuple[str, str]
    model: PeftModel
    pad_token_id: int
    base_bytes: int
    adapters: set[str] = field(default_factory=set)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """The LoRA parameters of adapter ``name`` (``...lora_A.<name>.weight``)."""
        marker = f".{name}."
        return [p for n, p in self.model.named_parameters() if marker in n and "lora_" in n]


def _linear_names(model: nn.Module) -> list[str]:
    """The names LoRA can target: leaf names of the base's linear layers (seen through peft's wrappers)."""
    names = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and "lora_" not in path:
            parts = path.split(".")
            names.add(parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1])
    return sorted(names - {"lm_head"})


def _target_error(config: RunConfig, base: nn.Module, exc: ValueError) -> InvalidArgument:
    """What a tenant can fix when the run's LoRA targets do not fit its base model (peft's words in the log)."""
    log.info("peft refused the LoRA of %s: %s", config.base_model, exc)
    names = _linear_names(base)
    return InvalidArgument(
        f"lora.target_modules {list(config.lora_target_modules)} match no module of base model "
        f"{config.base_model!r}; use names such as {', '.join(names[:8])}"
    )


class BasePool:
    """The base models a trainer holds, keyed by (resolved model directory, dtype)."""

    def __init__(self, placement: Placement, models: ModelCatalog) -> None:
        self.placement = placement
        self.models = models
        self.bases: dict[tuple[str, str], SharedBase] = {}

    def attach(self, config: RunConfig, name: str) -> SharedBase:
        """Add adapter ``name`` (fresh LoRA seeded by ``config.seed``, as ``get_peft_model`` would make it)
        to the shared base of ``config.base_model``, loading the base if no run uses it yet."""
        model_dir = str(self.models.resolve(config.base_model))
        key = (model_dir, str(self.placement.dtype))
        lora = policy.lora_config(config)
        entry = self.bases.get(key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # LoRA A is random: version 1 is reproducible for a config
            if entry is None:
                entry = self._load_base(key, config, lora, name)
            else:
                try:
                    entry.model.add_adapter(name, lora)
                except ValueError as exc:
                    raise _target_error(config, entry.model.get_base_model(), exc) from exc
        entry.model.to(self.placement.device)
        entry.adapters.add(name)
        return entry

    def _load_base(self, key: tuple[str, str], config: RunConfig, lora: LoraConfig, name: str) -> SharedBase:
        from transformers import AutoTokenizer

        model_dir = key[0]
        base = load_pretrained(model_dir, self.placement)
        base_bytes = tensor_bytes(base)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        try:
            model = get_peft_model(base, lora, adapter_name=name)
        except ValueError as exc:  # the base may be half-wrapped: it is not kept
            raise _target_error(config, base, exc) from exc
        entry = SharedBase(key=key, model=model, pad_token_id=int(pad), base_bytes=base_bytes)
        self.bases[key] = entry
        log.info("loaded base model %s (%s, %.1f MB)", model_dir, key[1], base_bytes / 2**20)
        return entry

    def detach(self, entry: SharedBase, name: str) -> None:
        """Delete adapter ``name``; drop the base when no adapter is left."""
        entry.adapters.discard(name)
        if not entry.adapters:
            self.bases.pop(entry.key, None)
            log.info("dropped base model %s (no run uses it)", entry.key[0])
        elif name in entry.model.peft_config:
            if entry.model.active_adapter == name:  # peft warns when the active adapter goes
                entry.model.set_adapter(next(iter(entry.adapters)))
            entry.model.delete_adapter(name)

    def base_bytes(self) -> int:
        return sum(entry.base_bytes for entry in self.bases.values())

    def entries(self) -> Iterable[SharedBase]:
        return self.bases.values()


__all__ = ["BasePool", "SharedBase", "adapter_name", "tensor_bytes"]
