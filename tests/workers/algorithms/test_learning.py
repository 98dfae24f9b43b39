"""Every preset learns a toy task on a tiny Llama: raise the fraction of completion tokens in a target set.

Every preset in ``PRESETS``, including any added later, gets what it needs: a greedy baseline per prompt
(ReMax), a teacher that prefers the target tokens (on-policy distillation), two-turn episodes with a turn
reward (turn-level estimators). Seeded; the assertion is a margin on mean reward, before vs after.
"""

from __future__ import annotations

import pytest
import torch
from support.algorithms import VOCAB
from support.learning import (
    COMPLETION_LENGTH,
    ENVIRONMENT_IDS,
    PROMPT_LENGTH,
    TURN_LENGTH,
    build_policy,
    build_teacher,
    eval_prompts,
    mean_reward,
    rollout_groups,
    rollout_turn_groups,
    task_targets,
)

from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import PRESETS, resolve_method
from policyopt.workers.train.teacher import LocalTeacher
from policyopt.workers.train.update import PolicyUpdater

GROUP_SIZE = 8
PROMPTS_PER_STEP = 4
STEPS = 12
MARGIN = 0.15
TURN_ESTIMATORS = frozenset({"turn_grpo"})
"""Estimators that credit per-turn rewards: their presets train on two-turn episodes."""


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_raises_mean_reward(preset: str) -> None:
    spec = resolve_method(MethodChoice(preset=preset))
    model = build_policy()
    targets, prompts_E_L = task_targets(), eval_prompts()
    teacher = None
    if "teacher" in spec.needs:
        teacher = LocalTeacher(build_teacher(model, targets), pad_token_id=0, device=torch.device("cpu"))
    multi_turn = spec.reward_side.estimator.name in TURN_ESTIMATORS
    updater = PolicyUpdater(
        model,
        spec,
        learning_rate=3e-2,
        pad_token_id=0,
        micro_batch_size=16,
        max_completion_length=2 * TURN_LENGTH + len(ENVIRONMENT_IDS) if multi_turn else COMPLETION_LENGTH,
        teacher=teacher,
    )
    before = mean_reward(model, prompts_E_L, targets)
    prompt_rng = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        prompts = torch.randint(0, VOCAB, (PROMPTS_PER_STEP, PROMPT_LENGTH), generator=prompt_rng)
        if multi_turn:
            groups = rollout_turn_groups(model, prompts, targets, GROUP_SIZE)
        else:
            groups = rollout_groups(model, prompts, targets, GROUP_SIZE, spec.needs_greedy_baseline)
        updater.step(groups)
    after = mean_reward(model, prompts_E_L, targets)
    print(f"{preset}: mean reward {before:.3f} -> {after:.3f}")
    assert after > before + MARGIN, f"{preset}: mean reward {before:.3f} -> {after:.3f}"
