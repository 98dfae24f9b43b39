"""Agentic RL on the reward side: turn segmentation, turn-level credit (hand-computed, loop vs vectorized),
per-turn rewards in the step batch, and environment tokens kept out of the loss."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel
from support.algorithms import make_groups

from policyopt.core.types import MethodChoice, Trajectory, TrajectoryGroup
from policyopt.workers.algorithms import list_methods, resolve_method
from policyopt.workers.algorithms.registry import ADVANTAGE_ESTIMATORS
from policyopt.workers.algorithms.reward_side.common import AdvantageInputs
from policyopt.workers.algorithms.reward_side.estimators import GRPOParams
from policyopt.workers.algorithms.reward_side.turns import (
    TurnCreditParams,
    discounted_turn_returns,
    turn_index,
    turn_rewards,
)
from policyopt.workers.train.step_batch import build_micro_batch, collate_groups
from policyopt.workers.train.update import PolicyUpdater


def turn_grpo(inputs: AdvantageInputs, **params: object) -> torch.Tensor:
    return ADVANTAGE_ESTIMATORS.get("turn_grpo").fn(inputs, TurnCreditParams(**params)).advantages_B_T  # type: ignore[arg-type]


def two_turn_inputs() -> AdvantageInputs:
    # A: turns [0,1] and [3,4]; turn reward 1 at token 1, outcome 4 at token 4.
    # B: turns [0] and [2]; outcome 0. Tokens 3-4 of B are padding.
    mask_B_T = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 1, 0, 0]], dtype=torch.float32)
    rewards_B_T = torch.tensor([[0, 1, 0, 0, 4], [0, 0, 0, 0, 0]], dtype=torch.float32)
    return AdvantageInputs(rewards_B_T, mask_B_T, torch.tensor([0, 0]))


def test_turn_index_counts_runs_of_trained_tokens() -> None:
    mask_B_T = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0]])
    expected = torch.tensor([[-1, 0, 0, -1, -1, 1, -1, 2], [0, 0, 0, 0, -1, -1, -1, -1]])
    assert torch.equal(turn_index(mask_B_T), expected)


def test_turn_rewards_sum_token_rewards_per_turn() -> None:
    inputs = two_turn_inputs()
    expected = torch.tensor([[1.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(turn_rewards(inputs.token_rewards_B_T, inputs.mask_B_T), expected)


def test_discounted_credit_matches_hand_computed_returns() -> None:
    # gamma 0.5. A: G_1 = 4, G_0 = 1 + 0.5 * 4 = 3. B: G = 0, 0. Baseline: mean of G_0 over the group = 1.5.
    advantages = turn_grpo(two_turn_inputs(), credit="discounted", gamma=0.5, scale="none")
    expected = torch.tensor([[1.5, 1.5, 0.0, 2.5, 2.5], [-1.5, 0.0, -1.5, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    # group_std divides by the sample std of G_0 = (3, 0): 1.5 * sqrt(2).
    scaled = turn_grpo(two_turn_inputs(), credit="discounted", gamma=0.5, scale="group_std", eps=1e-12)
    torch.testing.assert_close(scaled, expected / (1.5 * math.sqrt(2)))


def test_outcome_credit_broadcasts_the_whole_return_to_every_model_turn() -> None:
    # S_A = 1 + 4 = 5, S_B = 0: mean 2.5, every model token of A gets +2.5, of B -2.5; environment tokens 0.
    advantages = turn_grpo(two_turn_inputs(), credit="outcome", scale="none")
    expected = torch.tensor([[2.5, 2.5, 0.0, 2.5, 2.5], [-2.5, 0.0, -2.5, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)


@pytest.mark.parametrize("credit", ["outcome", "discounted"])
def test_turn_grpo_reduces_to_grpo_with_only_an_outcome_reward(credit: str) -> None:
    batch = collate_groups(make_groups(num_groups=4, group_size=4, seed=3), pad_token_id=0)
    inputs = AdvantageInputs(batch.token_rewards_B_T, batch.mask_B_T, batch.group_index_B)
    grpo = ADVANTAGE_ESTIMATORS.get("grpo").fn(inputs, GRPOParams()).advantages_B_T
    torch.testing.assert_close(turn_grpo(inputs, credit=credit, gamma=1.0), grpo)


def loop_discounted_advantages(
    rewards_B_T: torch.Tensor, mask_B_T: torch.Tensor, groups: list[int], gamma: float
) -> torch.Tensor:
    """Reference: walk each sequence, split turns, discount per turn, baseline = group mean of G_0 (no scale)."""
    B, T = mask_B_T.shape
    per_sequence = []
    for b in range(B):
        turns: list[list[int]] = []
        for t in range(T):
            if mask_B_T[b, t] > 0:
                if t == 0 or mask_B_T[b, t - 1] == 0:
                    turns.append([])
                turns[-1].append(t)
        rewards = [sum(float(rewards_B_T[b, t]) for t in turn) for turn in turns]
        returns = [
            sum(gamma ** (j - k) * rewards[j] for j in range(k, len(rewards))) for k in range(len(rewards))
        ]
        per_sequence.append((turns, returns))
    advantages_B_T = torch.zeros(B, T)
    for b, (turns, returns) in enumerate(per_sequence):
        members = [i for i in range(B) if groups[i] == groups[b]]
        baseline = sum(per_sequence[i][1][0] if per_sequence[i][1] else 0.0 for i in members) / len(members)
        for k, turn in enumerate(turns):
            for t in turn:
                advantages_B_T[b, t] = returns[k] - baseline
    return advantages_B_T


def test_discounted_credit_loop_matches_vectorized() -> None:
    generator = torch.Generator().manual_seed(0)
    mask_B_T = (torch.rand(8, 12, generator=generator) > 0.35).float()
    mask_B_T[:, 0] = 1.0
    rewards_B_T = torch.randn(8, 12, generator=generator) * (torch.rand(8, 12, generator=generator) > 0.6)
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    inputs = AdvantageInputs(rewards_B_T * mask_B_T, mask_B_T, torch.tensor(groups))
    expected = loop_discounted_advantages(rewards_B_T * mask_B_T, mask_B_T, groups, 0.7)
    torch.testing.assert_close(turn_grpo(inputs, credit="discounted", gamma=0.7, scale="none"), expected)


def test_discounted_turn_returns_hand_computed() -> None:
    returns = discounted_turn_returns(torch.tensor([[1.0, 0.0, 2.0]]), 0.5)
    torch.testing.assert_close(returns, torch.tensor([[1.0 + 0.25 * 2.0, 0.5 * 2.0, 2.0]]))


def agentic_group() -> TrajectoryGroup:
    """Two 2-turn trajectories: model [0,2), environment [2,4), model [4,6); turn rewards on the first turn."""
    trajectories = [
        Trajectory(
            completion_ids=[5, 6, 40, 41, 7, 8],
            sampler_logprobs=[-1.0, -1.0, 0.0, 0.0, -1.0, -1.0],
            reward=reward,
            loss_mask=[1, 1, 0, 0, 1, 1],
            turn_ends=[2, 6],
            turn_rewards=[turn_reward, 0.0],
        )
        for reward, turn_reward in ((1.0, 0.5), (0.0, 0.0))
    ]
    return TrajectoryGroup("run", "g", "p", "", [3, 4], trajectories, adapter_version=0)


def test_step_batch_places_turn_rewards_at_turn_ends_and_sums_the_raw_score() -> None:
    batch = collate_groups([agentic_group()], pad_token_id=0)
    torch.testing.assert_close(batch.token_rewards_B_T[0], torch.tensor([0, 0.5, 0, 0, 0, 1.0]))
    torch.testing.assert_close(batch.raw_scores_B, torch.tensor([1.5, 0.0]))
    assert agentic_group().trajectories[0].total_reward == 1.5


def test_environment_tokens_are_never_scored_nor_credited(lora_model: PeftModel) -> None:
    group = agentic_group()
    batch = collate_groups([group], pad_token_id=0)
    micro = build_micro_batch(batch, [0, 1], 0, torch.device("cpu"))
    assert micro.targets_N.tolist() == [5, 6, 7, 8] * 2  # the LM head never sees tokens 40, 41
    updater = PolicyUpdater(
        lora_model, resolve_method(MethodChoice("agentic_grpo")), learning_rate=1e-3, pad_token_id=0
    )
    prepared = updater.prepare([group])
    assert torch.all(prepared.advantages_B_T[:, 2:4] == 0)
    assert torch.all(prepared.advantages_B_T[0, [0, 1, 4, 5]] > 0)
    metrics = updater.step([group])
    assert metrics["reward/turns_mean"] == 2.0
    assert metrics["reward/mean"] == pytest.approx(0.75)


def test_agentic_extensions_are_listed_with_their_presets() -> None:
    choices, presets = list_methods()
    names = {(c.axis, c.name) for c in choices}
    assert ("reward_side.estimator", "turn_grpo") in names
    assert ("reward_side.estimator", "on_policy_distillation") in names
    by_name = {p.name: p for p in presets}
    assert {"agentic_grpo", "grpo_opd", "opd"} <= set(by_name)
    assert by_name["agentic_grpo"].trajectory_side["mismatch_correction"]["name"] == "token_tis"  # type: ignore[index]
    assert resolve_method(MethodChoice("agentic_grpo", reward_side={"estimator.credit": "discounted"}))
