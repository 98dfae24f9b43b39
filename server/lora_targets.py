"""``lora.target_modules`` against the base model's module tree, built on the meta device (no weights).

A name targets a module when the module's qualified name equals it or ends with ``"." + name``: peft's
rule for a list of strings. Every module it targets must be of a type LoRA wraps, else peft fails when
the trainer loads the run; so each name must target at least one module, and only such modules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import quote

CACHED_MODELS = 16
"""Module trees kept (a tree is the model's module names, a few thousand strings for a 70B model)."""
MAX_LISTED_NAMES = 40


def _module_tree(model_dir: Path) -> dict[str, bool]:
    """Qualified module name -> whether LoRA can wrap it, from config.json alone."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    lora_types = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: isinstance(module, lora_types) for name, module in model.named_modules() if name}


def _targets(tree: dict[str, bool], target: str) -> list[bool]:
    suffix = "." + target
    return [ok for name, ok in tree.items() if name == target or name.endswith(suffix)]


class LoraTargetChecker:
    """Checks ``lora.target_modules`` of a run; ``resolve(base_model)`` gives the model's directory."""

    def __init__(self, resolve: Callable[[str], Path]) -> None:
        self._resolve = resolve
        self._lock = threading.Lock()
        self._trees: OrderedDict[Path, dict[str, bool]] = OrderedDict()

    def tree(self, base_model: str) -> dict[str, bool]:
        """The model's module tree (cached per resolved directory, least recently used dropped)."""
        directory = self._resolve(base_model)
        with self._lock:
            if directory not in self._trees:
                try:
                    self._trees[directory] = _module_tree(directory)
                except (OSError, ValueError, KeyError, ImportError) as exc:
                    raise InvalidArgument(
                        f"base_model {quote(base_model)} cannot be built from its config.json "
                        f"({type(exc).__name__}: {quote(str(exc), 120)}); give a causal language model"
                    ) from exc
                while len(self._trees) > CACHED_MODELS:
                    self._trees.popitem(last=False)
            self._trees.move_to_end(directory)
            return self._trees[directory]

    def check(self, base_model: str, targets: Sequence[str]) -> None:
        """InvalidArgument naming each target that matches no module or a module LoRA cannot wrap."""
        tree = self.tree(base_model)
        bad = [t for t in targets if not (matched := _targets(tree, t)) or not all(matched)]
        if bad:
            valid = sorted({name.rsplit(".", 1)[-1] for name, ok in tree.items() if ok})
            listed = ", ".join(valid[:MAX_LISTED_NAMES]) + (", ..." if len(valid) > MAX_LISTED_NAMES else "")
            raise InvalidArgument(
                f"lora.target_modules {', '.join(quote(t, 64) for t in bad[:8])} name no layer of base_model "
                f"{quote(base_model)} that LoRA can adapt (Linear, Embedding, Conv1d/2d, Conv1D); a name "
                f"matches a module whose full name is it or ends with '.' + it; valid names: {listed}"
            )
