"""Trajectory groups -> step tensors (B sequences x T completion tokens), and length-sorted micro-batches.

Only completion positions are ever scored: a micro-batch carries the flat indices of the hidden states that
predict each trained token, so the LM head never runs over the prompt or the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.core.types import TrajectoryGroup


@dataclass
class StepBatch:
    """Every sequence of a step, groups flattened; completions right-padded to T.

    ``mask_B_T`` is 1 on trained tokens (``loss_mask``, all ones when empty); ``last_token_B_T`` marks the
    last trained token, which carries the sequence's outcome reward. ``token_rewards_B_T`` is the reward
    per token: each model turn's reward at its last token (agentic trajectories) plus the outcome at the
    last trained token; ``raw_scores_B`` is its sum per sequence.
    """

    prompt_ids: list[list[int]]
    completion_ids_B_T: Tensor
    mask_B_T: Tensor
    last_token_B_T: Tensor
    sampler_logp_B_T: Tensor
    token_rewards_B_T: Tensor
    completion_lengths_B: Tensor
    raw_scores_B: Tensor
    group_index_B: Tensor
    baseline_scores_B: Tensor | None
    num_groups: int

    @property
    def size(self) -> int:
        return len(self.prompt_ids)

    def sequence_lengths(self) -> list[int]:
        """Prompt + completion tokens per sequence (what the model forward costs)."""
        completion = self.completion_lengths_B.tolist()
        return [len(p) + int(c) for p, c in zip(self.prompt_ids, completion, strict=True)]


def _check_trajectory(group: TrajectoryGroup, index: int) -> None:
    trajectory = group.trajectories[index]
    n = len(trajectory.completion_ids)
    if len(trajectory.sampler_logprobs) != n:
        raise ValueError(
            f"group {group.group_id} trajectory {index}: {len(trajectory.sampler_logprobs)} sampler log-probs "
            f"for {n} completion tokens"
        )
    if trajectory.loss_mask and len(trajectory.loss_mask) != n:
        raise ValueError(f"group {group.group_id} trajectory {index}: loss_mask length != completion length")
    if len(trajectory.turn_ends) != len(trajectory.turn_rewards) or any(
        not 0 < end <= n for end in trajectory.turn_ends
    ):
        raise ValueError(f"group {group.group_id} trajectory {index}: turn_ends/turn_rewards do not fit")


def collate_groups(groups: Sequence[TrajectoryGroup], pad_token_id: int) -> StepBatch:
    """Flatten groups into step tensors; ``baseline_scores_B`` is set only if every group has a baseline."""
    prompts: list[list[int]] = []
    completions: list[list[int]] = []
    masks: list[list[int]] = []
    logps: list[list[float]] = []
    scores: list[float] = []
    group_index: list[int] = []
    baselines: list[float | None] = []
    turn_rewards: list[list[tuple[int, float]]] = []
    for g, group in enumerate(groups):
        for i, trajectory in enumerate(group.trajectories):
            _check_trajectory(group, i)
            prompts.append(list(group.prompt_ids))
            completions.append(list(trajectory.completion_ids))
            masks.append(list(trajectory.loss_mask) or [1] * len(trajectory.completion_ids))
            logps.append(list(trajectory.sampler_logprobs))
            scores.append(float(trajectory.reward))
            turn_rewards.append(list(zip(trajectory.turn_ends, trajectory.turn_rewards, strict=True)))
            group_index.append(g)
            baselines.append(group.baseline_reward)
    width = max((len(c) for c in completions), default=0)
    B = len(completions)
    completion_ids_B_T = torch.full((B, width), pad_token_id, dtype=torch.long)
    mask_B_T = torch.zeros(B, width)
    sampler_logp_B_T = torch.zeros(B, width)
    for b in range(B):
        n = len(completions[b])
        completion_ids_B_T[b, :n] = torch.tensor(completions[b], dtype=torch.long)
        mask_B_T[b, :n] = torch.tensor(masks[b], dtype=torch.float32)
        sampler_logp_B_T[b, :n] = torch.tensor(logps[b], dtype=torch.float32)
    last_token_B_T = last_token_mask(mask_B_T)
    token_rewards_B_T = _token_rewards(scores, turn_rewards, last_token_B_T)
    return StepBatch(
        prompt_ids=prompts,
        completion_ids_B_T=completion_ids_B_T,
        mask_B_T=mask_B_T,
        last_token_B_T=last_token_B_T,
        sampler_logp_B_T=sampler_logp_B_T * mask_B_T,
        token_rewards_B_T=token_rewards_B_T,
        completion_lengths_B=torch.tensor([len(c) for c in completions], dtype=torch.long),
        raw_scores_B=torch.tensor(
            [score + sum(r for _, r in rewards) for score, rewards in zip(scores, turn_rewards, strict=True)]
        ),
        group_index_B=torch.tensor(group_index, dtype=torch.long),
        baseline_scores_B=None
        if any(b is None for b in baselines)
        else torch.tensor(baselines, dtype=torch.float32),
        num_groups=len(groups),
    )


def _token_rewards(
    scores: list[float], turn_rewards: list[list[tuple[int, float]]], last_token_B_T: Tensor
) -> Tensor:
    """The outcome at the last trained token, plus each turn's reward at the turn's last token. B x T."""
    token_rewards_B_T = torch.tensor(scores, dtype=torch.float32).unsqueeze(-1) * last_token_B_T
    for b, rewards in enumerate(turn_rewards):
        for end, reward in rewards:
            token_rewards_B_T[b, end - 1] += reward
    return token_rewards_B_T


def last_token_mask(mask_B_T: Tensor) -> Tensor:
    """1.0 at the last position where ``mask_B_T`` is 1, per row (all zeros for a row without any)."""
    T = mask_B_T.shape[1]
    if mask_B_T.numel() == 0:
        return torch.zeros_like(mask_B_T)
    positions_B_T = torch.arange(T).expand_as(mask_B_T)
    last_B = torch.where(mask_B_T > 0, positions_B_T, torch.full_like(positions_B_T, -1)).amax(dim=1)
    return ((positions_B_T == last_B.unsqueeze(1)) & (last_B.unsqueeze(1) >= 0)).float()


def plan_micro_batches(rows: Sequence[int], lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Split ``rows`` into micro-batches of similar length (longest first), so padding stays small."""
    ordered = sorted(rows, key=lambda r: -lengths[r])
    return [ordered[i : i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]


@dataclass
class MicroBatch:
    """Model inputs for some rows of a StepBatch, completions trimmed to this micro-batch's width T.

    ``hidden_index_N`` indexes the flattened (b x L) hidden states that predict each trained token;
    ``token_index_N`` indexes the flattened (b x T) completion grid where its log-prob goes.
    """

    rows: Tensor
    input_ids_b_L: Tensor
    attention_mask_b_L: Tensor
    hidden_index_N: Tensor
    token_index_N: Tensor
    targets_N: Tensor
    width: int


def build_micro_batch(
    batch: StepBatch, rows: Sequence[int], pad_token_id: int, device: torch.device
) -> MicroBatch:
    """Right-padded prompt + completion rows and the gather/scatter indices of trained tokens."""
    lengths = [int(batch.completion_lengths_B[r]) for r in rows]
    width = max(lengths, default=0)
    total = max((len(batch.prompt_ids[r]) + n for r, n in zip(rows, lengths, strict=True)), default=0)
    input_ids_b_L = torch.full((len(rows), total), pad_token_id, dtype=torch.long)
    attention_mask_b_L = torch.zeros(len(rows), total, dtype=torch.long)
    hidden_index: list[Tensor] = []
    token_index: list[Tensor] = []
    for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
        prompt = batch.prompt_ids[r]
        p = len(prompt)
        if p == 0:
            raise ValueError("a trajectory group has an empty prompt; at least one prompt token is needed")
        input_ids_b_L[i, :p] = torch.tensor(prompt, dtype=torch.long)
        input_ids_b_L[i, p : p + n] = batch.completion_ids_B_T[r, :n]
        attention_mask_b_L[i, : p + n] = 1
        trained_t = torch.nonzero(batch.mask_B_T[r, :n] > 0).squeeze(1)
        hidden_index.append(i * total + p - 1 + trained_t)
        token_index.append(i * width + trained_t)
    hidden_index_N = torch.cat(hidden_index) if hidden_index else torch.zeros(0, dtype=torch.long)
    rows_tensor = torch.tensor(list(rows), dtype=torch.long)
    flat_targets = batch.completion_ids_B_T[rows_tensor, :width].reshape(-1)
    token_index_N = torch.cat(token_index) if token_index else torch.zeros(0, dtype=torch.long)
    return MicroBatch(
        rows=rows_tensor.to(device),
        input_ids_b_L=input_ids_b_L.to(device),
        attention_mask_b_L=attention_mask_b_L.to(device),
        hidden_index_N=hidden_index_N.to(device),
        token_index_N=token_index_N.to(device),
        targets_N=flat_targets[token_index_N].to(device),
        width=width,
    )
