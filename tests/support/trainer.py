"""Test helpers for the trainer tests: a stand-in updater, and a Valkey-backed environment whose runs are
created as CreateRun creates them (a real preset, resolved and pinned)."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import torch

from policyopt.core.settings import Settings
from policyopt.core.types import MethodChoice, Run, RunConfig, Trajectory, TrajectoryGroup, to_json
from policyopt.state.queue import TRAINER_GROUP, WorkQueue, groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms import DiagnosticWarning, MethodSpec, pin_method, resolve_method
from policyopt.workers.train.worker import TrainerWorker


class StandInUpdater:
    """Test stand-in with PolicyUpdater's signature: REINFORCE with a group-mean baseline, AdamW on the LoRA."""

    critic = None
    last_warnings: list[DiagnosticWarning] = []

    def __init__(
        self,
        model: torch.nn.Module,
        spec: MethodSpec,
        *,
        learning_rate: float,
        pad_token_id: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.device = device
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate)
        self.loaded_state: dict[str, object] | None = None

    def _logp_mean(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        ids_1_T = torch.tensor([prompt_ids + completion_ids], device=self.device)
        logits_T_V = self.model(input_ids=ids_1_T).logits[0, len(prompt_ids) - 1 : -1].float()
        targets_T = torch.tensor(completion_ids, device=self.device)
        return torch.log_softmax(logits_T_V, -1).gather(-1, targets_T[:, None]).mean()

    def step(
        self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        self.optimizer.zero_grad()
        count = sum(len(g.trajectories) for g in groups)
        rewards = []
        for group in groups:
            rewards_G = torch.tensor([t.reward for t in group.trajectories])
            advantages_G = rewards_G - rewards_G.mean()
            rewards += rewards_G.tolist()
            for traj, advantage in zip(group.trajectories, advantages_G.tolist(), strict=True):
                loss = -advantage * self._logp_mean(group.prompt_ids, traj.completion_ids) / count
                loss.backward()
        self.optimizer.step()
        return {"reward/mean": sum(rewards) / len(rewards)}

    def state_dict(self) -> dict[str, object]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.loaded_state = state
        optimizer_state = state["optimizer"]
        assert isinstance(optimizer_state, dict)
        self.optimizer.load_state_dict(optimizer_state)


@dataclass
class TrainerEnv:
    """Valkey + settings + a tiny model, with helpers to create runs, queue groups and start trainers."""

    settings: Settings
    r: redis.Redis
    model_dir: Path
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    workers: list[TrainerWorker] = field(default_factory=list)

    def create_run(self, **config: object) -> Run:
        """A run as CreateRun stores it: ``method`` (a MethodChoice, grpo by default) resolved and pinned."""
        values: dict[str, Any] = {
            "group_size": 3,
            "prompts_per_step": 2,
            "learning_rate": 1e-2,
            "lora_rank": 4,
            "lora_alpha": 8,
            "method": MethodChoice("grpo"),
        }
        values.update(config)
        values["resolved_method"] = pin_method(resolve_method(values["method"]))
        return RunStore(self.r).create_run("tenant", RunConfig(base_model=str(self.model_dir), **values))

    def make_group(
        self,
        run: Run,
        *,
        zero_variance: bool = False,
        trace: dict[str, str] | None = None,
        adapter_version: int = 0,
        attempt: int = 0,
    ) -> TrajectoryGroup:
        size = run.config.group_size
        rewards = (
            [1.0] * size
            if zero_variance
            else [float(self.rng.randint(0, 1)) for _ in range(size - 1)] + [0.5]
        )
        trajectories = [
            Trajectory(
                completion_ids=[self.rng.randrange(4, 300) for _ in range(5)],
                sampler_logprobs=[-self.rng.random() * 3 for _ in range(5)],
                reward=r,
                finish_reason="stop",
            )
            for r in rewards
        ]
        prompt_ids = [self.rng.randrange(4, 300) for _ in range(6)]
        return TrajectoryGroup(
            run_id=run.run_id,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            prompt_id="p",
            prompt="What is 1 + 1?",
            prompt_ids=prompt_ids,
            trajectories=trajectories,
            adapter_version=adapter_version,
            trace=dict(trace or {}),
            attempt=attempt,
        )

    def push_groups(
        self,
        run: Run,
        n: int,
        *,
        zero_variance: bool = False,
        trace: dict[str, str] | None = None,
        adapter_version: int = 0,
        attempt: int = 0,
    ) -> list[str]:
        """Queue ``n`` groups as a rollout worker would (XADD to the run's stream); returns their group ids."""
        WorkQueue(self.r)  # creates the prompt stream's group
        stream = groups_stream(run.run_id)
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
            self.r.xgroup_create(stream, TRAINER_GROUP, id="0", mkstream=True)
        ids = []
        for _ in range(n):
            group = self.make_group(
                run,
                zero_variance=zero_variance,
                trace=trace,
                adapter_version=adapter_version,
                attempt=attempt,
            )
            self.r.xadd(stream, {"data": to_json(group)})
            ids.append(group.group_id)
        return ids

    def worker(self, **kwargs: Any) -> TrainerWorker:
        kwargs.setdefault(
            "updater_factory",
            lambda model, spec, config, pad, device, teacher=None: StandInUpdater(
                model, spec, learning_rate=config.learning_rate, pad_token_id=pad, device=device
            ),
        )
        kwargs.setdefault("block_ms", 50)
        kwargs.setdefault("lease_ttl_ms", 5000)
        worker = TrainerWorker(self.settings, redis_client=self.r, **kwargs)
        self.workers.append(worker)
        return worker
