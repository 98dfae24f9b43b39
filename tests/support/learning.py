"""A toy task the tiny Llama can learn in seconds: raise the fraction of sampled tokens in a target set.

The learning tests sample here, on token ids, by plain autoregressive sampling at temperature 1 (the sampler
log-probs come with each trajectory), and train through ``PolicyUpdater.step``.

The model is the library tests' tiny Llama with init std 0.1 rather than Llama's 0.02: at 0.02 the tied
embeddings keep every logit within about one nat of the others, so no LoRA can make any token likely and the
task cannot be learned.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import Tensor, nn

from policyopt.core.types import Trajectory, TrajectoryGroup
from support.algorithms import VOCAB, build_lora_model

COMPLETION_LENGTH = 6
TURN_LENGTH = 3  # model tokens per turn in two-turn episodes
ENVIRONMENT_IDS = (1, 2)  # what the "environment" answers between the two turns
PROMPT_LENGTH = 4


def build_policy(seed: int = 0) -> PeftModel:
    """The tiny Llama (init std 0.1) with a fresh rank-8 LoRA (B = 0), seeded."""
    return build_lora_model(
        seed,
        initializer_range=0.1,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        init_lora_weights=True,
    )


def task_targets() -> Tensor:
    """The target token set: an eighth of the vocabulary, fixed."""
    return torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))[: VOCAB // 8]


def eval_prompts() -> Tensor:
    return torch.randint(0, VOCAB, (8, PROMPT_LENGTH), generator=torch.Generator().manual_seed(2))


def reward(completion_ids_G_T: Tensor, targets: Tensor) -> Tensor:
    """Fraction of completion tokens that are in the target set."""
    return torch.isin(completion_ids_G_T, targets).float().mean(-1)


@torch.no_grad()
def extend(
    model: nn.Module,
    ids_B_L: Tensor,
    length: int,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``length`` sampled tokens after each row of ``ids_B_L`` (B x length) and their log-probs."""
    tokens, logps = [], []
    for _ in range(length):
        log_probs_B_V = torch.log_softmax(model(input_ids=ids_B_L).logits[:, -1].float(), dim=-1)
        if greedy:
            token_B = log_probs_B_V.argmax(-1)
        else:
            token_B = torch.multinomial(log_probs_B_V.exp(), 1, generator=generator).squeeze(-1)
        tokens.append(token_B)
        logps.append(log_probs_B_V.gather(1, token_B.unsqueeze(1)).squeeze(1))
        ids_B_L = torch.cat([ids_B_L, token_B.unsqueeze(1)], dim=1)
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def sample(
    model: nn.Module,
    prompts_P_L: Tensor,
    group_size: int,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``group_size`` completions per prompt (P*G x T) and their per-token log-probs."""
    return extend(
        model, prompts_P_L.repeat_interleave(group_size, dim=0), COMPLETION_LENGTH, greedy, generator
    )


def mean_reward(
    model: nn.Module, prompts_P_L: Tensor, targets: Tensor, generator: torch.Generator | None = None
) -> float:
    completions, _ = sample(model, prompts_P_L, 16, generator=generator)
    return float(reward(completions, targets).mean())


def _group(
    p: int, prompts_P_L: Tensor, trajectories: list[Trajectory], baseline: float | None
) -> TrajectoryGroup:
    return TrajectoryGroup(
        "run", f"g{p}", f"p{p}", "", prompts_P_L[p].tolist(), trajectories, 0, baseline_reward=baseline
    )


def rollout_groups(
    model: nn.Module,
    prompts_P_L: Tensor,
    targets: Tensor,
    group_size: int,
    with_greedy: bool = False,
    generator: torch.Generator | None = None,
) -> list[TrajectoryGroup]:
    """One group per prompt, sampled by ``model`` (its log-probs are the sampler's), scored by ``reward``;
    with ``with_greedy``, each group's baseline is the reward of a greedy completion (ReMax)."""
    completions, logps = sample(model, prompts_P_L, group_size, generator=generator)
    rewards = reward(completions, targets)
    greedy_rewards = reward(sample(model, prompts_P_L, 1, greedy=True)[0], targets) if with_greedy else None
    groups = []
    for p in range(prompts_P_L.shape[0]):
        trajectories = [
            Trajectory(
                completion_ids=completions[i].tolist(),
                sampler_logprobs=logps[i].tolist(),
                reward=float(rewards[i]),
            )
            for i in range(p * group_size, (p + 1) * group_size)
        ]
        groups.append(
            _group(
                p, prompts_P_L, trajectories, float(greedy_rewards[p]) if greedy_rewards is not None else None
            )
        )
    return groups


def rollout_turn_groups(
    model: nn.Module, prompts_P_L: Tensor, targets: Tensor, group_size: int
) -> list[TrajectoryGroup]:
    """Two-turn episodes: a model turn, the environment's ENVIRONMENT_IDS (masked out of the loss), a second
    model turn. Turn 1's target fraction is its turn reward, turn 2's the outcome."""
    context_B_L = prompts_P_L.repeat_interleave(group_size, dim=0)
    first_B_T, first_logp_B_T = extend(model, context_B_L, TURN_LENGTH)
    environment_B_E = torch.tensor(ENVIRONMENT_IDS).expand(len(context_B_L), -1)
    second_B_T, second_logp_B_T = extend(
        model, torch.cat([context_B_L, first_B_T, environment_B_E], 1), TURN_LENGTH
    )
    completions_B_T = torch.cat([first_B_T, environment_B_E, second_B_T], 1)
    logps_B_T = torch.cat([first_logp_B_T, torch.zeros(environment_B_E.shape), second_logp_B_T], 1)
    loss_mask = [1] * TURN_LENGTH + [0] * len(ENVIRONMENT_IDS) + [1] * TURN_LENGTH
    turn_rewards_B, outcomes_B = reward(first_B_T, targets), reward(second_B_T, targets)
    groups = []
    for p in range(prompts_P_L.shape[0]):
        trajectories = [
            Trajectory(
                completion_ids=completions_B_T[i].tolist(),
                sampler_logprobs=logps_B_T[i].tolist(),
                reward=float(outcomes_B[i]),
                loss_mask=loss_mask,
                turn_ends=[TURN_LENGTH, len(loss_mask)],
                turn_rewards=[float(turn_rewards_B[i]), 0.0],
            )
            for i in range(p * group_size, (p + 1) * group_size)
        ]
        groups.append(_group(p, prompts_P_L, trajectories, None))
    return groups


def build_teacher(student: PeftModel, targets: Tensor, bias: float = 3.0) -> nn.Module:
    """The student's base model with an LM-head bias on ``targets`` (+3: about 3/4 of its mass on them)."""
    teacher = copy.deepcopy(student.get_base_model()).eval()
    old = teacher.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = nn.Parameter(old.weight.detach().clone())
    with torch.no_grad():
        head.bias.zero_()
        head.bias[targets] = bias
    teacher.set_output_embeddings(head)
    teacher.config.tie_word_embeddings = False
    return teacher.requires_grad_(False)
