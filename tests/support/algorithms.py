"""Helpers for the method-library tests: a tiny Llama wrapped in a LoRA, and trajectory groups on token ids."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from policyopt.core.types import Trajectory, TrajectoryGroup

VOCAB = 64

ISSUE_PRESETS = (
    "reinforce", "ppo", "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax",
    "gspo", "cispo",
)  # fmt: skip
"""The presets the method-library issue names; the library may add more (agentic_grpo, grpo_opd, opd)."""


def build_lora_model(
    seed: int = 0,
    vocab_size: int = VOCAB,
    *,
    initializer_range: float = 0.02,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
    init_lora_weights: bool = False,
) -> PeftModel:
    """A 2-layer Llama (head_dim 32) with a rank-8 LoRA; deterministic for a seed.

    Learning tests pass ``initializer_range=0.1``: at Llama's 0.02 the tied LM head keeps the logits near
    zero, and no LoRA update can move the sampling distribution far.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=list(target_modules), init_lora_weights=init_lora_weights
    )
    return get_peft_model(LlamaForCausalLM(config), lora)


def make_groups(num_groups: int = 3, group_size: int = 4, seed: int = 0) -> list[TrajectoryGroup]:
    """Groups of varied prompt/completion lengths, one environment token, rewards 0/1 and a greedy baseline."""
    rng = torch.Generator().manual_seed(seed)
    groups = []
    for p in range(num_groups):
        prompt = torch.randint(1, VOCAB, (2 + p,), generator=rng).tolist()
        trajectories = []
        for g in range(group_size):
            length = 2 + (g + p) % 4
            ids = torch.randint(1, VOCAB, (length,), generator=rng).tolist()
            logps = (-torch.rand(length, generator=rng) * 4).tolist()
            loss_mask = [1] * length
            if g == 1 and length > 2:
                loss_mask[1] = 0  # an environment token in the middle
            reward = float(torch.rand(1, generator=rng) > 0.5)
            trajectories.append(
                Trajectory(completion_ids=ids, sampler_logprobs=logps, reward=reward, loss_mask=loss_mask)
            )
        groups.append(
            TrajectoryGroup(
                run_id="run",
                group_id=f"g{p}",
                prompt_id=f"p{p}",
                prompt="",
                prompt_ids=prompt,
                trajectories=trajectories,
                adapter_version=0,
                baseline_reward=0.5,
            )
        )
    return groups
