"""On-policy distillation: the dense teacher term (hand-computed, loop vs vectorized), its wiring through the
updater and the teacher scorers, and a short seeded learning run against a tiny teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel
from support.algorithms import build_lora_model, make_groups
from support.learning import build_teacher as build_biased_teacher
from torch import Tensor, nn

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs
from policyopt.workers.algorithms.reward_side.distillation import DistillationParams
from policyopt.workers.train.step_batch import StepBatch, collate_groups
from policyopt.workers.train.teacher import LocalTeacher, prompt_token_logprobs
from policyopt.workers.train.update import PolicyUpdater


def distill(inputs: AdvantageInputs, **params: object) -> tuple[Tensor, dict[str, float]]:
    result = ADVANTAGE_ESTIMATORS.get("on_policy_distillation").fn(inputs, DistillationParams(**params))  # type: ignore[arg-type]
    return result.advantages_B_T, result.metrics


def opd_inputs(rewards: list[float]) -> AdvantageInputs:
    mask_B_T = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    token_rewards_B_T = torch.zeros(2, 3)
    token_rewards_B_T[0, 1], token_rewards_B_T[1, 2] = rewards[0], rewards[1]
    return AdvantageInputs(
        token_rewards_B_T,
        mask_B_T,
        torch.tensor([0, 0]),
        logp_B_T=torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -1.0, -1.5]]),
        teacher_logp_B_T=torch.tensor([[-0.5, -3.0, -1.0], [-0.5, -2.0, -0.5]]),
    )


def test_pure_opd_is_minus_lambda_times_the_log_ratio_on_trained_tokens() -> None:
    # log pi - log pi_T = [-0.5, 1, (masked)], [0, 1, -1]; lambda 2 -> A = [1, -2, 0], [0, -2, 2].
    advantages, metrics = distill(opd_inputs([1.0, 0.0]), coef=2.0, task_coef=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, -2.0, 0.0], [0.0, -2.0, 2.0]]))
    assert metrics["reward/teacher_reverse_kl"] == pytest.approx((-0.5 + 1 + 0 + 1 - 1) / 5)


def test_grpo_opd_adds_the_teacher_term_to_the_group_advantage() -> None:
    # Scores 1 and 0, scale none: task advantages +0.5 / -0.5 on trained tokens; lambda 0.5.
    advantages, _ = distill(opd_inputs([1.0, 0.0]), coef=0.5, task_coef=1.0, scale="none")
    expected = torch.tensor([[0.5 + 0.25, 0.5 - 0.5, 0.0], [-0.5, -0.5 - 0.5, -0.5 + 0.5]])
    torch.testing.assert_close(advantages, expected)


def test_distillation_loop_matches_vectorized() -> None:
    generator = torch.Generator().manual_seed(1)
    groups = make_groups(num_groups=3, group_size=4, seed=2)
    batch = collate_groups(groups, pad_token_id=0)
    logp_B_T = -torch.rand(batch.mask_B_T.shape, generator=generator) * 3
    teacher_B_T = -torch.rand(batch.mask_B_T.shape, generator=generator) * 3
    inputs = AdvantageInputs(
        batch.token_rewards_B_T,
        batch.mask_B_T,
        batch.group_index_B,
        logp_B_T=logp_B_T,
        teacher_logp_B_T=teacher_B_T,
    )
    advantages, _ = distill(inputs, coef=0.3, task_coef=2.0, scale="none")
    scores = batch.raw_scores_B.tolist()
    group_of = batch.group_index_B.tolist()
    expected = torch.zeros_like(advantages)
    for b in range(batch.size):
        members = [scores[i] for i in range(batch.size) if group_of[i] == group_of[b]]
        task = scores[b] - sum(members) / len(members)
        for t in range(batch.mask_B_T.shape[1]):
            if batch.mask_B_T[b, t] > 0:
                expected[b, t] = 2.0 * task - 0.3 * (logp_B_T[b, t] - teacher_B_T[b, t])
    torch.testing.assert_close(advantages, expected)


def test_distillation_without_teacher_log_probs_says_what_is_missing() -> None:
    inputs = opd_inputs([1.0, 0.0])
    inputs.teacher_logp_B_T = None
    with pytest.raises(ValueError, match="teacher"):
        distill(inputs)


def test_opd_presets_need_a_teacher_and_reject_a_method_that_learns_nothing() -> None:
    assert "teacher" in resolve_method(MethodChoice("grpo_opd")).needs
    assert "teacher" in resolve_method(MethodChoice("opd")).needs
    assert "teacher" not in resolve_method(MethodChoice("agentic_grpo")).needs
    with pytest.raises(InvalidArgument, match="nothing is learned"):
        resolve_method(MethodChoice("opd", reward_side={"estimator.coef": 0.0}))


def test_prompt_logprobs_are_read_per_prompt_token() -> None:
    entries = [None, {"7": {"logprob": -0.25, "rank": 1}}, {"9": {"logprob": -2.0}, "3": {"logprob": -0.1}}]
    assert prompt_token_logprobs(entries, [1, 7, 9]) == [0.0, -0.25, -2.0]
    with pytest.raises(InvalidArgument, match="prompt_logprobs"):
        prompt_token_logprobs(entries[:2], [1, 7, 9])


class FixedTeacher:
    """A teacher that reports the same log-prob for every token."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, batch: StepBatch) -> Tensor:
        return torch.full(batch.mask_B_T.shape, self.value)


def test_updater_reports_the_reverse_kl_to_the_teacher(lora_model: PeftModel) -> None:
    spec = resolve_method(MethodChoice("opd"))
    with pytest.raises(ValueError, match="needs a teacher"):
        PolicyUpdater(lora_model, spec, learning_rate=1e-3, pad_token_id=0)
    updater = PolicyUpdater(lora_model, spec, learning_rate=1e-3, pad_token_id=0, teacher=FixedTeacher(-3.0))
    prepared = updater.prepare(make_groups(seed=4))
    assert prepared.old_logp_B_T is not None
    mask = prepared.mask_B_T
    expected = float(((prepared.old_logp_B_T + 3.0) * mask).sum() / mask.sum())
    assert prepared.metrics["reward/teacher_reverse_kl"] == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(prepared.advantages_B_T, -(prepared.old_logp_B_T + 3.0) * mask)


def test_local_teacher_matches_a_full_forward(lora_model: PeftModel) -> None:
    base = copy.deepcopy(lora_model.get_base_model()).eval()
    batch = collate_groups(make_groups(seed=6), pad_token_id=0)
    scored = LocalTeacher(base, pad_token_id=0, device=torch.device("cpu"), micro_batch_size=3).score(batch)
    for b in range(batch.size):
        n = int(batch.completion_lengths_B[b])
        prompt = batch.prompt_ids[b]
        ids = torch.tensor([prompt + batch.completion_ids_B_T[b, :n].tolist()])
        with torch.no_grad():
            logits = base(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        full = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
        trained = batch.mask_B_T[b, :n] > 0
        torch.testing.assert_close(scored[b, :n][trained], full[trained], atol=1e-5, rtol=1e-5)


# -- learning: a tiny teacher that strongly prefers a few tokens -------------------------------------------

TEACHER_TOKENS = list(range(5, 13))
TASK_TOKENS = list(range(9, 17))


def build_student(seed: int) -> PeftModel:
    """The library tests' tiny Llama + LoRA, with larger initial weights so its logits can move far."""
    return build_lora_model(seed, initializer_range=0.1)


def build_teacher(student: PeftModel) -> nn.Module:
    """The student's base model with an LM-head bias of +3 on TEACHER_TOKENS (about 75% of its mass)."""
    return build_biased_teacher(student, torch.tensor(TEACHER_TOKENS))


def sample_groups(
    model: PeftModel, prompts: list[list[int]], group_size: int, length: int, seed: int
) -> list:
    """group_size completions of ``length`` tokens per prompt, with the sampler's log-probs (temperature 1)."""
    from policyopt.core.types import Trajectory, TrajectoryGroup

    generator = torch.Generator().manual_seed(seed)
    groups = []
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            ids = torch.tensor([prompt] * group_size)
            logps = []
            for _ in range(length):
                logp_G_V = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), -1)
                next_G = torch.multinomial(logp_G_V.exp(), 1, generator=generator)
                logps.append(logp_G_V.gather(-1, next_G)[:, 0])
                ids = torch.cat([ids, next_G], dim=1)
            completions = ids[:, len(prompt) :].tolist()
            logp_G_T = torch.stack(logps, dim=1).tolist()
            trajectories = [
                Trajectory(c, lp, reward=sum(t in TASK_TOKENS for t in c) / length)
                for c, lp in zip(completions, logp_G_T, strict=True)
            ]
            groups.append(TrajectoryGroup("run", f"g{p}", f"p{p}", "", prompt, trajectories, 0))
    return groups


def exact_reverse_kl(student: PeftModel, teacher: nn.Module, groups: list) -> float:
    """Mean over sampled positions of sum_v pi(v) (log pi(v) - log pi_T(v)), the exact per-position KL."""
    total, count = 0.0, 0
    with torch.no_grad():
        for group in groups:
            ids = torch.tensor([group.prompt_ids + t.completion_ids for t in group.trajectories])
            p = len(group.prompt_ids)
            student_logp = torch.log_softmax(student(input_ids=ids).logits[:, p - 1 : -1].float(), -1)
            teacher_logp = torch.log_softmax(teacher(input_ids=ids).logits[:, p - 1 : -1].float(), -1)
            kl = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
            total, count = total + float(kl.sum()), count + kl.numel()
    return total / count


def train(preset: str, steps: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """(exact reverse KL, task reward) of each step's samples while training ``preset`` against the teacher."""
    student = build_student(seed)
    teacher = build_teacher(student)
    updater = PolicyUpdater(
        student,
        resolve_method(MethodChoice(preset)),
        learning_rate=1e-2,
        pad_token_id=0,
        teacher=LocalTeacher(teacher, pad_token_id=0, device=torch.device("cpu")),
    )
    prompts = [[1, 2, 3], [4, 20, 21], [30, 31], [40, 41, 42, 43]]
    kls, rewards = [], []
    for step in range(steps):
        groups = sample_groups(student, prompts, group_size=8, length=6, seed=seed * 1000 + step)
        kls.append(exact_reverse_kl(student, teacher, groups))
        rewards.append(sum(t.reward for g in groups for t in g.trajectories) / 32)
        updater.step(groups)
    return kls, rewards


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
def test_opd_lowers_the_reverse_kl_to_the_teacher() -> None:
    kls, _ = train("opd", steps=20)
    print(f"opd reverse KL per step: {[round(k, 3) for k in kls]}")
    assert mean(kls[-3:]) < 0.7 * mean(kls[:3])


@pytest.mark.slow
def test_grpo_opd_lowers_the_reverse_kl_and_raises_the_task_reward() -> None:
    kls, rewards = train("grpo_opd", steps=20)
    print(f"grpo_opd reverse KL: {[round(k, 3) for k in kls]}, reward: {[round(r, 3) for r in rewards]}")
    assert mean(kls[-3:]) < 0.9 * mean(kls[:3])
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.25
