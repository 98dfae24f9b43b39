"""Fixtures for the method library: a tiny Llama wrapped in a LoRA, and trajectory groups on token ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from peft import PeftModel
from support.algorithms import build_lora_model, make_groups

from policyopt.core.types import TrajectoryGroup


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; more threads only spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lora_model() -> PeftModel:
    return build_lora_model()


@pytest.fixture
def groups_factory() -> Callable[..., list[TrajectoryGroup]]:
    return make_groups
