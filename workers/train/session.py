"""A run's training state in a trainer: base model + LoRA, method spec and updater, restored from a version."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from peft import PeftModel

from policyopt.core.outbound import OutboundPolicy
from policyopt.core.types import Run, RunConfig, TrajectoryGroup
from policyopt.models import ModelCatalog
from policyopt.state.adapter_store import AdapterStore
from policyopt.workers.algorithms import DiagnosticWarning, MethodSpec, run_method
from policyopt.workers.placement import Placement
from policyopt.workers.train import policy
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.teacher import TeacherScorer, load_teacher

log = logging.getLogger(__name__)


class Updater(Protocol):
    """What the trainer needs of ``policyopt.workers.train.update.PolicyUpdater``."""

    @property
    def last_warnings(self) -> Sequence[DiagnosticWarning]:
        """Compound-failure signatures seen in the last step."""
        ...

    @property
    def critic(self) -> torch.nn.Module | None:
        """The value head trained beside the policy (PPO), published with each version; None without one."""
        ...

    def step(self, groups: list[TrajectoryGroup]) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, object]: ...
    def load_state_dict(self, state: dict[str, object]) -> None: ...


class UpdaterFactory(Protocol):
    """Builds a run's updater; ``teacher`` is given when the method needs one."""

    def __call__(
        self,
        model: torch.nn.Module,
        spec: MethodSpec,
        config: RunConfig,
        pad_token_id: int,
        device: torch.device,
        teacher: TeacherScorer | None = None,
    ) -> Updater: ...


def build_updater(
    model: torch.nn.Module,
    spec: MethodSpec,
    config: RunConfig,
    pad_token_id: int,
    device: torch.device,
    teacher: TeacherScorer | None = None,
) -> Updater:
    """The real ``PolicyUpdater`` for the run's method and settings."""
    from policyopt.workers.train.update import PolicyUpdater

    return PolicyUpdater(
        model,
        spec,
        learning_rate=config.learning_rate,
        pad_token_id=pad_token_id,
        device=device,
        temperature=config.temperature,
        max_completion_length=config.max_new_tokens,
        seed=config.seed,
        teacher=teacher,
    )


@dataclass
class RunSession:
    """A run this trainer holds the lease of, with its model and updater in memory."""

    run: Run
    model: PeftModel
    updater: Updater
    spec: MethodSpec
    version: int


def load_session(
    run: Run,
    version: int,
    *,
    placement: Placement,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    models: ModelCatalog,
    outbound: OutboundPolicy,
    updater_factory: UpdaterFactory = build_updater,
) -> RunSession:
    """The run's policy at ``version`` (0: a fresh LoRA) and its pinned method, with the updater state saved
    for that version. Its models resolve through ``models`` and its teacher endpoint passes ``outbound``."""
    spec = run_method(run.config)
    model, pad_token_id = policy.load_policy(run.config, placement, models)
    if version:
        version_dir = store.open_version(run.run_id, version, verify=True)
        policy.load_adapter_weights(model, version_dir, placement.device)
    teacher = None
    if "teacher" in spec.needs:  # on-policy distillation: the teacher loads once per process
        teacher = load_teacher(run.config.teacher, placement, pad_token_id, models=models, outbound=outbound)
    updater = updater_factory(model, spec, run.config, pad_token_id, placement.device, teacher=teacher)
    state = checkpoints.load(run.run_id, version) if version else None
    updater_state = state.get("updater") if state is not None else None
    if isinstance(updater_state, dict):
        updater.load_state_dict(updater_state)
    elif version:
        log.warning("run %s: no trainer state for version %d; the optimizer restarts", run.run_id, version)
    return RunSession(run=run, model=model, updater=updater, spec=spec, version=version)


__all__ = ["RunSession", "Updater", "UpdaterFactory", "build_updater", "load_session"]
