"""Every preset learns a toy task on a tiny Llama: raise the fraction of completion tokens in a target set.

Rollouts are sampled here, on token ids, by the policy itself (sampler log-probs included), then trained
through ``PolicyUpdater.step``. Seeded; the assertion is a margin on mean reward, before vs after.

The model is built inline rather than with ``build_tiny_model``: that model's init (std 0.02, tied
embeddings) keeps every logit within about one nat of the others, so no LoRA can make any token likely
and the task cannot be learned. Same architecture (2 layers, head_dim 32), init std 0.1.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from support.algorithms import ISSUE_PRESETS, build_lora_model

from policyopt.core.types import MethodChoice, Trajectory, TrajectoryGroup
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.train.update import PolicyUpdater

PRESETS = ISSUE_PRESETS
COMPLETION_LENGTH = 6
GROUP_SIZE = 8
PROMPTS_PER_STEP = 4
STEPS = 12
MARGIN = 0.15
VOCAB = 64


def build_policy() -> PeftModel:
    """The library tests' tiny Llama (init std 0.1) with a fresh rank-8 LoRA (B = 0), seeded."""
    return build_lora_model(
        0,
        initializer_range=0.1,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        init_lora_weights=True,
    )


def reward(completion_ids_G_T: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of completion tokens that are in the target set."""
    return torch.isin(completion_ids_G_T, targets).float().mean(-1)


@torch.no_grad()
def sample(
    model: PeftModel, prompts_P_L: torch.Tensor, group_size: int, greedy: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions (P*G x T) and their per-token log-probs, by plain autoregressive sampling at temperature 1."""
    ids = prompts_P_L.repeat_interleave(group_size, dim=0)
    logps = []
    for _ in range(COMPLETION_LENGTH):
        log_probs = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), dim=-1)
        token = log_probs.argmax(-1) if greedy else torch.multinomial(log_probs.exp(), 1).squeeze(-1)
        logps.append(log_probs.gather(1, token.unsqueeze(1)).squeeze(1))
        ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
    return ids[:, prompts_P_L.shape[1] :], torch.stack(logps, dim=1)


def rollout_groups(
    model: PeftModel, prompts_P_L: torch.Tensor, targets: torch.Tensor, with_greedy: bool
) -> list[TrajectoryGroup]:
    completions, logps = sample(model, prompts_P_L, GROUP_SIZE)
    rewards = reward(completions, targets)
    greedy_rewards = reward(sample(model, prompts_P_L, 1, greedy=True)[0], targets) if with_greedy else None
    groups = []
    for p in range(prompts_P_L.shape[0]):
        members = range(p * GROUP_SIZE, (p + 1) * GROUP_SIZE)
        trajectories = [
            Trajectory(
                completion_ids=completions[i].tolist(),
                sampler_logprobs=logps[i].tolist(),
                reward=float(rewards[i]),
            )
            for i in members
        ]
        baseline = float(greedy_rewards[p]) if greedy_rewards is not None else None
        groups.append(
            TrajectoryGroup(
                "run",
                f"g{p}",
                f"p{p}",
                "",
                prompts_P_L[p].tolist(),
                trajectories,
                0,
                baseline_reward=baseline,
            )
        )
    return groups


def mean_reward(model: PeftModel, prompts_P_L: torch.Tensor, targets: torch.Tensor) -> float:
    completions, _ = sample(model, prompts_P_L, 16)
    return float(reward(completions, targets).mean())


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_raises_mean_reward(preset: str) -> None:
    model = build_policy()
    vocab = VOCAB
    targets = torch.randperm(vocab, generator=torch.Generator().manual_seed(1))[: vocab // 8]
    eval_prompts = torch.randint(0, vocab, (8, 4), generator=torch.Generator().manual_seed(2))
    spec = resolve_method(MethodChoice(preset=preset))
    updater = PolicyUpdater(
        model,
        spec,
        learning_rate=3e-2,
        pad_token_id=0,
        micro_batch_size=16,
        max_completion_length=COMPLETION_LENGTH,
    )
    before = mean_reward(model, eval_prompts, targets)
    prompt_rng = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        prompts = torch.randint(0, vocab, (PROMPTS_PER_STEP, 4), generator=prompt_rng)
        updater.step(rollout_groups(model, prompts, targets, spec.needs_greedy_baseline))
    after = mean_reward(model, eval_prompts, targets)
    assert after > before + MARGIN, f"{preset}: mean reward {before:.3f} -> {after:.3f}"
