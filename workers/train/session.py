"""A run's training state in a trainer: its adapter on a shared base, method spec and updater, restored
from a version."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
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
from policyopt.workers.train.base_pool import BasePool, SharedBase, adapter_name, tensor_bytes
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.distributed import SINGLE, Ranks
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

    def step(
        self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        """Train on ``groups``; raise ``StepAbandoned`` between optimizer steps once ``should_continue``
        turns false."""
        ...

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
    *,
    ranks: Ranks = SINGLE,
) -> Updater:
    """The real ``PolicyUpdater`` for the run's method and settings (one of ``ranks`` when data-parallel)."""
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
        ranks=ranks,
    )


def data_parallel_updaters(ranks: Ranks) -> UpdaterFactory:
    """``build_updater`` for one of ``ranks``: its steps shard sequences and sum gradients over ranks."""
    return functools.partial(build_updater, ranks=ranks)


@dataclass
class RunSession:
    """A run this trainer holds the lease of: its adapter ``adapter`` on the shared ``model``, and updater."""

    run: Run
    model: PeftModel
    updater: Updater
    spec: MethodSpec
    version: int
    adapter: str = "default"
    base: SharedBase | None = None

    def activate(self) -> None:
        """Make this run's adapter the one the shared model trains and scores with."""
        if self.adapter in self.model.peft_config and self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)

    def adapter_parameters(self) -> list[torch.nn.Parameter]:
        if self.base is None:
            return [p for p in self.model.parameters() if p.requires_grad]
        return self.base.adapter_parameters(self.adapter)

    def release_gradients(self) -> None:
        """Free the last step's gradients (the next step starts from zero anyway): a quarter of the run's
        memory between its turns."""
        critic = self.updater.critic
        for parameter in [*self.adapter_parameters(), *(critic.parameters() if critic is not None else [])]:
            parameter.grad = None

    def memory_bytes(self) -> int:
        """The run's own memory: LoRA weights and gradients, plus optimizer state and critic (tensor sizes)."""
        return 2 * tensor_bytes(self.adapter_parameters()) + tensor_bytes(self.updater.state_dict())


def load_session(
    run: Run,
    version: int,
    *,
    pool: BasePool,
    placement: Placement,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    models: ModelCatalog,
    outbound: OutboundPolicy,
    updater_factory: UpdaterFactory = build_updater,
) -> RunSession:
    """The run's policy at ``version`` (0: a fresh LoRA, or a warm start's ``init_adapter``) as an adapter on ``pool``'s shared base, its pinned
    method and the updater state saved for that version. Models resolve through ``models``; the teacher
    endpoint passes ``outbound``. The adapter is detached again if anything fails."""
    spec = run_method(run.config)
    name = adapter_name(run.run_id)
    base = pool.attach(run.config, name)
    try:
        return _restore(
            run, version, spec, base, name, placement, store, checkpoints, models, outbound, updater_factory
        )
    except BaseException:
        pool.detach(base, name)
        raise


def _restore(
    run: Run,
    version: int,
    spec: MethodSpec,
    base: SharedBase,
    name: str,
    placement: Placement,
    store: AdapterStore,
    checkpoints: CheckpointStore,
    models: ModelCatalog,
    outbound: OutboundPolicy,
    updater_factory: UpdaterFactory,
) -> RunSession:
    model, pad_token_id = base.model, base.pad_token_id
    model.set_adapter(name)  # the updater takes the parameters that require grad: this adapter's only
    if version or run.config.init_adapter:  # version 0 of a warm start is the adapter it started from
        version_dir = store.open_version(run.run_id, version, verify=True)
        policy.load_adapter_weights(model, version_dir, placement.device, adapter_name=name)
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
    return RunSession(
        run=run, model=model, updater=updater, spec=spec, version=version, adapter=name, base=base
    )


__all__ = [
    "RunSession",
    "Updater",
    "UpdaterFactory",
    "build_updater",
    "data_parallel_updaters",
    "load_session",
]
