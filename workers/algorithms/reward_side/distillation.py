"""On-policy distillation (OPD) on the reward side: a dense per-token teacher term added to the GRPO advantage.

With y sampled from the student pi_theta, -(log pi_theta(y_t) - log pi_teacher(y_t)) is a one-sample estimate
of minus the per-token reverse KL(pi_theta || pi_teacher); using it as the advantage of token t minimizes that
reverse KL (Agarwal et al. 2024, "On-policy distillation of language models", arXiv:2306.13649; Qwen3
report, arXiv:2505.09388; Thinking Machines, "On-policy distillation", 2025). Added to the group advantage
it keeps the task reward in the objective (GRPO-OPD); with ``task_coef`` 0 it is pure OPD.

Shapes: B sequences, T completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from policyopt.workers.algorithms.params import param
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import (
    AdvantageInputs,
    AdvantageResult,
    advantage_metrics,
    masked_mean,
)
from policyopt.workers.algorithms.reward_side.turns import TurnCreditParams, compute_turn_advantages


@dataclass(frozen=True)
class DistillationParams(TurnCreditParams):
    coef: float = param(
        1.0,
        "lambda, the weight of the teacher term (a run's teacher.coef sets it). Raise it to follow the "
        "teacher more closely, lower it when the task reward should dominate.",
    )
    task_coef: float = param(
        1.0,
        "Weight of the task advantage (GRPO over turns, see credit/gamma/scale). 0 is pure on-policy "
        "distillation: rewards are ignored, only the teacher teaches.",
    )

    def validate(self) -> list[str]:
        problems = super().validate()
        problems += [] if self.coef >= 0 else [f"coef must be >= 0; got {self.coef}"]
        problems += [] if self.task_coef >= 0 else [f"task_coef must be >= 0; got {self.task_coef}"]
        if self.coef == 0 and self.task_coef == 0:
            problems.append("coef and task_coef are both 0, so nothing is learned; set either above 0")
        return problems


def teacher_reverse_kl(logp_B_T: Tensor, teacher_logp_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """log pi_theta(y_t) - log pi_teacher(y_t) on trained tokens (0 elsewhere): the per-token k1 estimate
    of KL(pi_theta || pi_teacher) at the sampled token."""
    return (logp_B_T - teacher_logp_B_T) * mask_B_T


@ADVANTAGE_ESTIMATORS.register(
    "on_policy_distillation",
    params=DistillationParams,
    needs=("teacher",),
    rationale="Dense per-token -lambda*(log pi - log pi_teacher) added to the (turn) GRPO advantage; "
    "task_coef 0 is pure on-policy distillation (reverse KL to a teacher).",
)
def compute_distillation_advantages(inputs: AdvantageInputs, params: DistillationParams) -> AdvantageResult:
    """A_t = task_coef * A^turn_grpo_t - coef * (log pi_theta(y_t) - log pi_teacher(y_t)).

    ``inputs.logp_B_T`` are the trainer's pre-update log-probs and ``inputs.teacher_logp_B_T`` the teacher's,
    of the same tokens. The teacher term is per token and undiscounted (a dense reward of its own token).
    """
    if inputs.logp_B_T is None or inputs.teacher_logp_B_T is None:
        raise ValueError(
            "on_policy_distillation needs the trainer's and the teacher's log-probs of every sampled token; "
            "create the run with a teacher (teacher.model or teacher.endpoint)"
        )
    mask_B_T = inputs.mask_B_T
    reverse_kl_B_T = teacher_reverse_kl(inputs.logp_B_T, inputs.teacher_logp_B_T, mask_B_T).detach()
    advantages_B_T = -params.coef * reverse_kl_B_T
    metrics: dict[str, float] = {}
    if params.task_coef > 0:
        task = compute_turn_advantages(inputs, params)
        advantages_B_T = advantages_B_T + params.task_coef * task.advantages_B_T
        metrics |= {k: v for k, v in task.metrics.items() if not k.startswith("reward/advantage_")}
        metrics["reward/task_advantage_std"] = advantage_metrics(task.advantages_B_T, mask_B_T)[
            "reward/advantage_std"
        ]
    metrics["reward/teacher_reverse_kl"] = float(masked_mean(reverse_kl_B_T, mask_B_T))
    metrics["reward/teacher_logprob_mean"] = float(masked_mean(inputs.teacher_logp_B_T, mask_B_T))
    return AdvantageResult(advantages_B_T, None, metrics | advantage_metrics(advantages_B_T, mask_B_T))
