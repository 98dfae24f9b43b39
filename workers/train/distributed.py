"""Data-parallel training over torchrun ranks: the rank context and its collectives.

Under ``torchrun --nproc-per-node N -m policyopt.cli.main worker train`` every process trains the same
LoRA from the same groups. Rank 0 (the leader) owns Redis and the adapter store: it schedules, leases,
reads a step's groups and broadcasts them; every rank computes the reward side on the full groups, then
forward/backward on its shard of the sequences; gradients are summed across ranks (each rank's loss is
already divided by the whole step's token/sequence counts, so the sum is the one-process gradient), and
every rank takes the same optimizer step. Followers (``follower.TrainerFollower``) never write anything.

World size 1 (no ``WORLD_SIZE`` > 1 in the environment) is ``SINGLE``: no process group, every
collective a no-op, the one-process numbers unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from policyopt.workers.placement import Placement

T = TypeVar("T")

COLLECTIVE_TIMEOUT = timedelta(days=7)
"""How long a follower waits in a collective: an idle trainer sends nothing between steps for hours."""


class RanksDiverged(BaseException):
    """An update failed on this rank outside an agreed abandon: other ranks may be waiting in a collective
    it will never join, so the process exits (non-zero) and torchrun restarts or ends the whole group.

    A BaseException so that the trainer's per-run failure handling (``except Exception``) lets it through.
    """


@dataclass(frozen=True)
class Ranks:
    """This process's place among the trainer's data-parallel ranks (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        """Rank 0: the one that touches Redis and publishes."""
        return self.rank == 0

    def shard(self, rows: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """This rank's rows: longest first, dealt round robin, so ranks get similar token counts."""
        if not self.is_distributed:
            return list(rows)
        ordered = sorted(rows, key=lambda row: -lengths[row])
        return ordered[self.rank :: self.world_size]

    def broadcast_object(self, value: T | None) -> T:
        """Rank 0's ``value`` (picklable) on every rank; other ranks pass None."""
        if not self.is_distributed:
            assert value is not None
            return value
        box: list[object] = [value if self.is_leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather_objects(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered  # type: ignore[return-value]

    def agree(self, decision: bool) -> bool:
        """Rank 0's ``decision`` on every rank, so all ranks stop (or go on) at the same collective."""
        return bool(self.broadcast_object(decision)) if self.is_distributed else decision

    def broadcast_(self, tensor: Tensor) -> Tensor:
        """Overwrite ``tensor`` with rank 0's (same shape and dtype on every rank)."""
        if self.is_distributed:
            dist.broadcast(tensor, src=0)
        return tensor

    def sum_(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over ranks, in place."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_float(self, value: float) -> float:
        if not self.is_distributed:
            return value
        return float(self.sum_(torch.tensor([value], dtype=torch.float64, device=self.collective_device)))

    @property
    def collective_device(self) -> torch.device:
        """Where small host values travel: NCCL moves only CUDA tensors."""
        if self.is_distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks (one flat all-reduce).

        A rank with an empty shard has no gradients: it sends zeros. A parameter no rank produced a
        gradient for keeps ``grad=None``, as in one process (AdamW then skips it).
        """
        if not self.is_distributed or not parameters:
            return
        reference = parameters[0]
        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in parameters], device=reference.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).to(reference.dtype) for g in grads] + [present.to(reference.dtype)])
        self.sum_(flat)
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype).clone()
            offset += size
        for parameter, count in zip(parameters, flat[offset:].tolist(), strict=True):
            if count == 0:
                parameter.grad = None

    def place(self, placement: Placement) -> Placement:
        """One GPU per rank: ``cuda`` becomes ``cuda:LOCAL_RANK``; the CPU is shared."""
        if self.is_distributed and placement.device.type == "cuda":
            return replace(placement, device=torch.device("cuda", self.local_rank))
        return placement

    def close(self) -> None:
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Ranks()
"""One process: today's trainer, no torch.distributed."""


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun describes in the environment; ``SINGLE`` outside torchrun."""
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return SINGLE
    return Ranks(int(env["RANK"]), world_size, int(env.get("LOCAL_RANK", env["RANK"])))


def init_ranks(device_setting: str, environ: Mapping[str, str] | None = None) -> Ranks:
    """Join torchrun's process group (NCCL for GPUs, gloo on CPUs); ``SINGLE`` when not under torchrun."""
    ranks = ranks_from_env(environ)
    if not ranks.is_distributed or dist.is_initialized():
        return ranks
    setting = device_setting.strip().lower() or "auto"
    on_gpu = setting.startswith("cuda") or (setting == "auto" and torch.cuda.is_available())
    if on_gpu:
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(
        backend="nccl" if on_gpu else "gloo",
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return ranks


__all__ = ["COLLECTIVE_TIMEOUT", "SINGLE", "Ranks", "RanksDiverged", "init_ranks", "ranks_from_env"]
