"""One policy update of a peft LoRA model from scored trajectory groups, as a ``MethodSpec`` prescribes.

Usage (the trainer worker)::

    updater = PolicyUpdater(model, spec, learning_rate=1e-5, pad_token_id=pad, device=device,
                            micro_batch_size=8, temperature=config.temperature,
                            max_completion_length=config.max_new_tokens)
    metrics = updater.step(groups)          # dict[str, float], keys 'reward/...', 'trajectory/...'
    updater.last_warnings                   # compound failures seen in that step (DiagnosticWarning)
    state = updater.state_dict()            # optimizer, critic, running stats: save with the adapter
    updater.load_state_dict(state)          # after a restart, on a freshly built updater

A step: drop groups the spec's group filter rejects (raw scores); if the spec needs them, one no-grad pass
for the pre-update log-probs, the reference log-probs (adapter disabled) and critic values; shape the token
rewards and estimate advantages; then ``epochs`` x ``mini_batches`` optimizer steps, each accumulating
gradients over length-sorted micro-batches and normalizing by the whole mini-batch's token/sequence counts.
With one epoch and one mini-batch the old log-probs are the current ones, detached (no extra pass).
Each micro-batch's loss (token loss, plus the critic's value loss) is ``micro_loss.micro_batch_loss``.

Data-parallel (``ranks``, see ``distributed``): every rank prepares the full groups (advantages are per
group), the no-grad pass and each optimizer step's forward/backward run on this rank's shard of the
sequences, normalized by the whole mini-batch's counts, and gradients, losses and token metrics are summed
over ranks. Rank 0's ``should_continue`` decides for all. With one rank nothing of this runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from policyopt.core.types import TrajectoryGroup
from policyopt.workers.algorithms.diagnostics import (
    DiagnosticWarning,
    TokenMetricAccumulator,
    detect_failures,
    length_metrics,
    reward_metrics,
)
from policyopt.workers.algorithms.diagnostics_window import DiagnosticWindow
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS, CRITICS, GROUP_FILTERS, REWARD_SHAPING
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs, sequence_scores
from policyopt.workers.algorithms.reward_side.shaping import ShapingContext
from policyopt.workers.algorithms.spec import MethodSpec
from policyopt.workers.algorithms.trajectory_side.aggregation import StepTotals
from policyopt.workers.train.distributed import SINGLE, Ranks
from policyopt.workers.train.micro_loss import Metrics, PreparedStep, micro_batch_loss
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import (
    StepBatch,
    build_micro_batch,
    collate_groups,
    plan_micro_batches,
)
from policyopt.workers.train.teacher import TeacherScorer


class StepAbandoned(Exception):
    """The step's ``should_continue`` turned false (run cancelled, lease lost, trainer stopping).

    The model may hold part of the update: the caller drops it and reloads the last committed version.
    """


class PolicyUpdater:
    """Owns the optimizer (and critic) of one run and applies ``spec`` to batches of groups.

    Args:
        model: a peft LoRA causal LM (trainable parameters are the adapter's).
        spec: the resolved method.
        learning_rate, weight_decay, max_grad_norm: AdamW and gradient clipping of the policy.
        pad_token_id: used to pad micro-batches (masked out).
        device: where the model lives.
        micro_batch_size: sequences per forward/backward; gradients accumulate exactly across them.
        temperature: the sampling temperature; log-probs are taken at it, as the sampler's were.
        max_completion_length: the run's max_new_tokens (overlong penalty, constant-normalizer aggregation).
        seed: mini-batch shuffling across epochs.
        teacher: the teacher's log-probs of the sampled tokens, for methods that need a teacher (OPD).
        ranks: the data-parallel ranks this updater is one of (``SINGLE``: one process).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: MethodSpec,
        *,
        learning_rate: float,
        pad_token_id: int,
        device: torch.device | str = "cpu",
        micro_batch_size: int = 8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        temperature: float = 1.0,
        max_completion_length: int = 0,
        seed: int = 0,
        teacher: TeacherScorer | None = None,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.model, self.spec, self.ranks = model, spec, ranks
        if "teacher" in spec.needs and teacher is None:
            raise ValueError(f"method {spec.name!r} needs a teacher: pass teacher= (TeacherScorer)")
        self.teacher = teacher if "teacher" in spec.needs else None
        self.device = torch.device(device)
        self.pad_token_id, self.micro_batch_size = pad_token_id, micro_batch_size
        self.max_grad_norm, self.max_completion_length = max_grad_norm, max_completion_length
        self.forward = PolicyForward(model, temperature)
        self.policy_parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.policy_parameters:
            raise ValueError("the model has no trainable parameters; wrap it with a peft LoRA first")
        critic_choice = spec.reward_side.critic
        self.critic: nn.Module | None = CRITICS.get(critic_choice.name).fn(
            self.forward.hidden_size, critic_choice.params
        )
        groups: list[dict[str, Any]] = [{"params": self.policy_parameters, "weight_decay": weight_decay}]
        if self.critic is not None:
            self.critic.to(self.device)
            critic_lr = float(getattr(critic_choice.params, "learning_rate", learning_rate))
            groups.append({"params": list(self.critic.parameters()), "lr": critic_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=learning_rate)
        self.estimator_state: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.previous_length_mean: float | None = None
        self.last_warnings: list[DiagnosticWarning] = []
        self.diagnostic_window = DiagnosticWindow()  # trend detectors judge the last steps, not one

    # ----- the step -------------------------------------------------------------------------------

    def step(
        self, groups: Sequence[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> Metrics:
        """Train on ``groups``: epochs x mini_batches optimizer steps. Returns the step's metrics.

        ``should_continue`` is asked before the first pass and each optimizer step; when it turns false the
        step raises ``StepAbandoned`` (the caller drops the partly updated model).
        """
        asked = should_continue or (lambda: True)

        def keep_going() -> bool:
            return self.ranks.agree(asked())

        if not keep_going():
            raise StepAbandoned("abandoned before the update")
        prepared = self.prepare(groups)
        metrics = dict(prepared.metrics)
        if prepared.batch.size == 0:
            self.last_warnings = detect_failures(self.diagnostic_window.observe(metrics), self.spec)
            return metrics | {"trajectory/optimizer_steps": 0.0}
        side = self.spec.trajectory_side
        accumulator = TokenMetricAccumulator()
        losses: list[float] = []
        grad_norms: list[float] = []
        for _ in range(side.epochs):
            order = torch.randperm(prepared.batch.size, generator=self.generator).tolist()
            for chunk in torch.tensor(order).chunk(min(side.mini_batches, prepared.batch.size)):
                if not keep_going():
                    raise StepAbandoned(f"abandoned after {len(losses)} optimizer steps")
                loss, grad_norm = self.optimize(prepared, chunk.tolist(), accumulator)
                losses.append(loss)
                grad_norms.append(grad_norm)
        if self.ranks.is_distributed:
            accumulator = TokenMetricAccumulator.merged(self.ranks.gather_objects(accumulator))
        metrics |= accumulator.result()
        metrics["trajectory/loss"] = sum(losses) / len(losses)
        metrics["trajectory/grad_norm"] = sum(grad_norms) / len(grad_norms)
        metrics["trajectory/optimizer_steps"] = float(len(losses))
        self.last_warnings = detect_failures(self.diagnostic_window.observe(metrics), self.spec)
        return metrics

    def warnings(self, metrics: Metrics | None = None) -> list[DiagnosticWarning]:
        """Compound failures in ``metrics`` (default: those of the last step)."""
        return detect_failures(metrics, self.spec) if metrics is not None else list(self.last_warnings)

    def prepare(self, groups: Sequence[TrajectoryGroup]) -> PreparedStep:
        """Filter groups, run the no-grad pass if needed, shape rewards and estimate advantages."""
        everything = collate_groups(groups, self.pad_token_id)
        metrics = reward_metrics(everything.raw_scores_B, everything.group_index_B, everything.num_groups)
        batch = self._filter_groups(groups, everything)
        metrics["reward/groups"] = float(everything.num_groups)
        metrics["reward/groups_filtered"] = float(everything.num_groups - batch.num_groups)
        mask_B_T = batch.mask_B_T.to(self.device)
        prepared = PreparedStep(
            batch,
            mask_B_T,
            batch.sampler_logp_B_T.to(self.device),
            torch.zeros_like(mask_B_T),
            batch.sequence_lengths(),
        )
        if batch.size == 0:
            prepared.metrics = metrics
            return prepared
        self._no_grad_pass(prepared)
        if self.teacher is not None:
            prepared.teacher_logp_B_T = self._teacher_logp(batch) * mask_B_T
        self._estimate_advantages(prepared, metrics)
        prepared.metrics = metrics
        return prepared

    def _teacher_logp(self, batch: StepBatch) -> Tensor:
        """The teacher scores the batch once, on rank 0; the other ranks receive its log-probs."""
        assert self.teacher is not None
        if not self.ranks.is_distributed:
            return self.teacher.score(batch).to(self.device)
        logp_B_T = torch.zeros(batch.mask_B_T.shape, device=self.device)
        if self.ranks.is_leader:
            logp_B_T = self.teacher.score(batch).to(self.device, torch.float32)
        return self.ranks.broadcast_(logp_B_T)

    def _filter_groups(self, groups: Sequence[TrajectoryGroup], everything: StepBatch) -> StepBatch:
        choice = self.spec.reward_side.group_filter
        keep_P = GROUP_FILTERS.get(choice.name).fn(
            everything.raw_scores_B, everything.group_index_B, everything.num_groups, choice.params
        )
        if bool(keep_P.all()):
            return everything
        return collate_groups(
            [g for g, keep in zip(groups, keep_P.tolist(), strict=True) if keep], self.pad_token_id
        )

    def _needs_old_pass(self) -> bool:
        side = self.spec.trajectory_side
        multiple_updates = side.epochs * side.mini_batches > 1
        return (
            multiple_updates
            or self.spec.needs_reference
            or self.critic is not None
            or self.teacher is not None
        )

    @torch.no_grad()
    def _no_grad_pass(self, prepared: PreparedStep) -> None:
        """Pre-update log-probs, reference log-probs and critic values for every sequence, once."""
        if not self._needs_old_pass():
            return
        batch = prepared.batch
        shape = prepared.mask_B_T.shape
        prepared.old_logp_B_T = torch.zeros(shape, device=self.device)
        prepared.ref_logp_B_T = torch.zeros(shape, device=self.device) if self.spec.needs_reference else None
        prepared.old_values_B_T = torch.zeros(shape, device=self.device) if self.critic is not None else None
        shard = self.ranks.shard(range(batch.size), prepared.lengths)
        for rows in plan_micro_batches(shard, prepared.lengths, self.micro_batch_size):
            micro = build_micro_batch(batch, rows, self.pad_token_id, self.device)
            outputs = self.forward.score(micro, keep_hidden=self.critic is not None)
            prepared.old_logp_B_T[micro.rows, : micro.width] = outputs.logp_b_T
            if prepared.ref_logp_B_T is not None:
                prepared.ref_logp_B_T[micro.rows, : micro.width] = self.forward.score_reference(micro)
            if (
                prepared.old_values_B_T is not None
                and self.critic is not None
                and outputs.hidden_N_H is not None
            ):
                values_b_T = self.forward.scatter(self.critic(outputs.hidden_N_H), micro)
                prepared.old_values_B_T[micro.rows, : micro.width] = values_b_T
        for grid_B_T in (prepared.old_logp_B_T, prepared.ref_logp_B_T, prepared.old_values_B_T):
            if grid_B_T is not None:
                self.ranks.sum_(grid_B_T)  # each row is filled by one rank, zeros elsewhere: exact

    def _estimate_advantages(self, prepared: PreparedStep, metrics: Metrics) -> None:
        batch, mask_B_T = prepared.batch, prepared.mask_B_T
        last_B_T = batch.last_token_B_T.to(self.device)
        token_rewards_B_T = batch.token_rewards_B_T.to(self.device)
        context = ShapingContext(
            mask_B_T,
            last_B_T,
            batch.completion_lengths_B.to(self.device),
            self.max_completion_length,
            prepared.old_logp_B_T,
            prepared.ref_logp_B_T,
        )
        for choice in self.spec.reward_side.shaping:
            token_rewards_B_T, shaping_metrics = REWARD_SHAPING.get(choice.name).fn(
                token_rewards_B_T, context, choice.params
            )
            metrics |= shaping_metrics
        metrics["reward/shaped_mean"] = float(sequence_scores(token_rewards_B_T, mask_B_T).mean())
        inputs = AdvantageInputs(
            token_rewards_B_T,
            mask_B_T,
            batch.group_index_B.to(self.device),
            prepared.old_values_B_T,
            batch.baseline_scores_B.to(self.device) if batch.baseline_scores_B is not None else None,
            self.estimator_state,
            logp_B_T=prepared.old_logp_B_T,
            teacher_logp_B_T=prepared.teacher_logp_B_T,
        )
        estimator = self.spec.reward_side.estimator
        result = ADVANTAGE_ESTIMATORS.get(estimator.name).fn(inputs, estimator.params)
        prepared.advantages_B_T, prepared.returns_B_T = result.advantages_B_T.detach(), result.returns_B_T
        metrics |= result.metrics
        sequence_advantages_B = (result.advantages_B_T * mask_B_T).sum(-1).cpu()
        metrics |= length_metrics(batch.completion_lengths_B, sequence_advantages_B)
        length_mean = metrics["trajectory/response_length_mean"]
        if self.previous_length_mean is not None:
            metrics["trajectory/response_length_growth"] = length_mean - self.previous_length_mean
        self.previous_length_mean = length_mean

    # ----- one optimizer step ---------------------------------------------------------------------

    def optimize(
        self, prepared: PreparedStep, rows: list[int], accumulator: TokenMetricAccumulator
    ) -> tuple[float, float]:
        """Accumulate gradients over ``rows`` (micro-batched), clip, and take one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.accumulate_gradients(prepared, rows, accumulator)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_parameters, self.max_grad_norm)
        if self.critic is not None:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return loss, float(grad_norm)

    def accumulate_gradients(
        self, prepared: PreparedStep, rows: list[int], accumulator: TokenMetricAccumulator | None = None
    ) -> float:
        """Forward + backward over ``rows`` as one optimizer step's worth; returns the step's scalar loss.

        Data-parallel: this rank's shard of ``rows``, divided by the counts of all ``rows``; the gradients
        and the loss are then summed over ranks.
        """
        rows_tensor = torch.tensor(rows, device=self.device)
        totals = StepTotals(
            tokens=int(prepared.mask_B_T[rows_tensor].sum()),
            sequences=len(rows),
            max_completion_length=self.max_completion_length or prepared.mask_B_T.shape[1],
        )
        accumulator = accumulator if accumulator is not None else TokenMetricAccumulator()
        total = 0.0
        shard = self.ranks.shard(rows, prepared.lengths)
        for micro_rows in plan_micro_batches(shard, prepared.lengths, self.micro_batch_size):
            micro = build_micro_batch(prepared.batch, micro_rows, self.pad_token_id, self.device)
            loss = micro_batch_loss(
                self.spec, self.forward, self.critic, prepared, micro, totals, accumulator
            )
            loss.backward()
            total += float(loss.detach())
        if self.ranks.is_distributed:
            critic = list(self.critic.parameters()) if self.critic is not None else []
            self.ranks.sum_gradients([*self.policy_parameters, *critic])
            total = self.ranks.sum_float(total)
        return total

    # ----- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        """Optimizer, critic weights and running statistics: everything to resume after a restart."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "estimator_state": dict(self.estimator_state),
            "generator": self.generator.get_state(),
            "previous_length_mean": self.previous_length_mean,
            "diagnostic_window": self.diagnostic_window.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned (the model's LoRA weights are restored separately)."""
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(state["critic"])  # type: ignore[arg-type]
        self.estimator_state = dict(state.get("estimator_state") or {})  # type: ignore[call-overload]
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.previous_length_mean = state.get("previous_length_mean")  # type: ignore[assignment]
        self.diagnostic_window.load_state_dict(state.get("diagnostic_window"))  # type: ignore[arg-type]
