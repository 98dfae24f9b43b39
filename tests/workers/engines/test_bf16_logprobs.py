"""bf16 on the CPU: the rollout engine's sampler log-probs and the trainer's log-probs of the same tokens.

Both load through ``placement.model_kwargs`` (eager attention in bf16 on the CPU), so the sampler's
one-token decode and the trainer's whole-sequence pass run the same matmuls: their log-probs agree to
float rounding, as fp32 ones do. With torch's SDPA they differ by about 0.04 nats a token on SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from policyopt.core.types import Trajectory, TrajectoryGroup
from policyopt.workers.engines import SamplingParams
from policyopt.workers.engines.transformers_engine import TransformersEngine
from policyopt.workers.placement import model_kwargs, resolve_placement
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import build_micro_batch, collate_groups

TOLERANCE = 1e-3  # nats; the measured gap is 0 on the tiny model and on SmolLM2-135M


def test_bf16_sampler_and_trainer_logprobs_agree(tiny_model_dir: Path) -> None:
    placement = resolve_placement("cpu", "bfloat16")
    assert model_kwargs(placement)["attn_implementation"] == "eager"
    engine = TransformersEngine(tiny_model_dir, device="cpu", dtype="bfloat16")
    prompts = [engine.encode_chat("hi"), engine.encode_chat("What is 12 + 30? Reply with just the number.")]
    rows = engine.sample(prompts, 3, SamplingParams(max_new_tokens=12, seed=0))
    engine.close()
    groups = [
        TrajectoryGroup(
            run_id="run",
            group_id=f"g{i}",
            prompt_id=f"p{i}",
            prompt="",
            prompt_ids=list(prompt),
            trajectories=[Trajectory(s.completion_ids, s.sampler_logprobs) for s in samples],
            adapter_version=0,
        )
        for i, (prompt, samples) in enumerate(zip(prompts, rows, strict=True))
    ]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **model_kwargs(placement))  # type: ignore[arg-type]
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = collate_groups(groups, pad_token_id=0)
    micro = build_micro_batch(batch, list(range(batch.size)), 0, torch.device("cpu"))
    with torch.no_grad():
        trainer_b_T = PolicyForward(model).score(micro).logp_b_T
    mask_b_T = batch.mask_B_T[micro.rows, : micro.width]
    sampler_b_T = batch.sampler_logp_B_T[micro.rows, : micro.width]
    assert mask_b_T.sum() > 0
    gap = ((trainer_b_T - sampler_b_T).abs() * mask_b_T).max()
    assert float(gap) < TOLERANCE
