"""Helpers for the data-parallel tests: ``PolicyUpdater`` steps on one rank of a gloo group (or alone)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.train.distributed import SINGLE, Ranks
from policyopt.workers.train.update import PolicyUpdater
from support.algorithms import build_lora_model, make_groups

METHODS: dict[str, MethodChoice] = {
    # GAE with a value head (its gradients are summed too), token-mean, a reference pass
    "ppo": MethodChoice("ppo"),
    # two epochs of three mini-batches each: six optimizer steps a step, shards of two rows
    "grpo_epochs": MethodChoice("grpo", trajectory_side={"epochs": 2, "mini_batches": 3}),
    # sequence sums over a constant
    "dr_grpo": MethodChoice("dr_grpo"),
}

STEPS = 2


def train(ranks: Ranks, out_dir: Path) -> None:
    """Two steps of every method in ``METHODS`` on fixed groups; saves weights and metrics per method."""
    torch.set_num_threads(1)
    results: dict[str, object] = {}
    for name, choice in METHODS.items():
        model = build_lora_model(seed=0, init_lora_weights=False)
        updater = PolicyUpdater(
            model,
            resolve_method(choice),
            learning_rate=1e-2,
            pad_token_id=0,
            micro_batch_size=2,
            max_completion_length=6,
            ranks=ranks,
        )
        metrics = [updater.step(make_groups(seed=step)) for step in range(STEPS)]
        weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        critic = updater.critic.state_dict() if updater.critic is not None else {}
        results[name] = {"weights": weights, "critic": critic, "metrics": metrics}
    torch.save(results, out_dir / f"rank{ranks.rank}-of-{ranks.world_size}.pt")


def train_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """``torch.multiprocessing.spawn`` target: join a gloo group on the loopback, then ``train``."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        train(Ranks(rank, world_size, rank), Path(out_dir))
    finally:
        dist.destroy_process_group()


def train_alone(out_dir: Path) -> None:
    train(SINGLE, out_dir)
