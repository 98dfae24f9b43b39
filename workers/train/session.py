"""A run's training state in a trainer: base model + LoRA, method spec and updater, restored from a version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from peft import PeftModel

from policyopt.core.types import Run, RunConfig, TrajectoryGroup
from policyopt.workers.adapters.store import AdapterStore
from policyopt.workers.train import policy
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.teacher import TeacherScorer, load_teacher

log = logging.getLogger(__name__)


class Updater(Protocol):
    """What the trainer needs of ``policyopt.workers.train.update.PolicyUpdater``."""

    def step(self, groups: list[TrajectoryGroup]) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, object]: ...
    def load_state_dict(self, state: dict[str, object]) -> None: ...


UpdaterFactory = Callable[..., Updater]
"""(model, method spec, run config, pad token id, device) -> updater; also ``teacher=`` (a
``TeacherScorer``) when the method needs a teacher."""


def resolve_spec(config: RunConfig) -> object:
    from policyopt.workers.algorithms import resolve_method

    return resolve_method(config.method)


def build_updater(
    model: torch.nn.Module,
    spec: object,
    config: RunConfig,
    pad_token_id: int,
    device: torch.device,
    teacher: TeacherScorer | None = None,
) -> Updater:
    from policyopt.workers.algorithms import MethodSpec
    from policyopt.workers.train.update import PolicyUpdater

    if not isinstance(spec, MethodSpec):
        raise TypeError(f"PolicyUpdater needs a MethodSpec from resolve_method, got {type(spec).__name__}")
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
    spec: object
    version: int


def load_session(
    run: Run,
    version: int,
    *,
    data_dir: str,
    placement: policy.Placement,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    spec_resolver: Callable[[RunConfig], object] = resolve_spec,
    updater_factory: UpdaterFactory = build_updater,
) -> RunSession:
    """The run's policy at ``version`` (0: a fresh LoRA), with the updater state saved for that version."""
    model, pad_token_id = policy.load_policy(run.config, data_dir, placement)
    spec = spec_resolver(run.config)
    if version:
        version_dir = store.open_version(run.run_id, version, verify=True)
        policy.load_adapter_weights(model, version_dir, placement.device)
    extras: dict[str, object] = {}
    if "teacher" in getattr(spec, "needs", ()):  # on-policy distillation: the teacher loads once per process
        extras["teacher"] = load_teacher(
            run.config.teacher, data_dir, placement.device, placement.dtype, pad_token_id
        )
    updater = updater_factory(model, spec, run.config, pad_token_id, placement.device, **extras)
    state = checkpoints.load(run.run_id, version) if version else None
    updater_state = state.get("updater") if state is not None else None
    if isinstance(updater_state, dict):
        updater.load_state_dict(updater_state)
    elif version:
        log.warning("run %s: no trainer state for version %d; the optimizer restarts", run.run_id, version)
    return RunSession(run=run, model=model, updater=updater, spec=spec, version=version)


__all__ = ["RunSession", "Updater", "UpdaterFactory", "build_updater", "load_session", "resolve_spec"]
