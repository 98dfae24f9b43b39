"""bf16 on the CPU: fp32 activations between bf16 matmuls, and what the sampler and the trainer then agree on.

Both load through ``placement.load_pretrained`` (eager attention, ``Bf16MatmulLinear``). A plain bf16 model
rounds each LoRA layer's ``base + delta`` back to bf16, and the base output is already a bf16 number, so a
delta under half a bf16 step is lost: early LoRA updates barely change what the sampler draws. With fp32
activations the delta survives, at a price: the decode's and the whole-sequence pass's matmuls round a
few values differently, and the fp32 residual stream carries that on, so their log-probs differ slightly
(on SmolLM2-135M: KL about 0.001 a token, below the pipelining lag's 0.002-0.003, which token TIS corrects).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from policyopt.core.types import Trajectory, TrajectoryGroup
from policyopt.workers.engines import SamplingParams
from policyopt.workers.engines.transformers_engine import TransformersEngine
from policyopt.workers.placement import (
    Bf16MatmulLinear,
    fp32_activations,
    load_pretrained,
    model_kwargs,
    resolve_placement,
    uses_fp32_activations,
)
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import build_micro_batch, collate_groups

MEAN_GAP = 1e-3  # nats a token; measured 2e-4 on the tiny model, most tokens exactly 0 and a few up to 0.03
MAX_GAP = 0.1
FAR_FRACTION = 0.05  # tokens more than 0.01 nats apart


def _sample(model_dir: Path) -> tuple[list[list[int]], list[list[tuple[list[int], list[float]]]]]:
    engine = TransformersEngine(model_dir, device="cpu", dtype="bfloat16")
    prompts = [
        engine.encode_chat(text)
        for text in ("hi", "What is 12 + 30? Reply with just the number.", "Name a colour.", "Count to 3.")
    ]
    rows = engine.sample(prompts, 4, SamplingParams(max_new_tokens=16, seed=0))
    engine.close()
    return prompts, [[(s.completion_ids, s.sampler_logprobs) for s in samples] for samples in rows]


def test_cpu_bf16_loads_with_fp32_activations_and_eager_attention() -> None:
    cpu_bf16 = resolve_placement("cpu", "bfloat16")
    assert uses_fp32_activations(cpu_bf16) and model_kwargs(cpu_bf16)["attn_implementation"] == "eager"
    assert not uses_fp32_activations(resolve_placement("cpu", "float32"))


def test_sampler_and_trainer_logprobs_agree_closely(tiny_model_dir: Path) -> None:
    prompts, rows = _sample(tiny_model_dir)
    groups = [
        TrajectoryGroup(
            run_id="run",
            group_id=f"g{i}",
            prompt_id=f"p{i}",
            prompt="",
            prompt_ids=list(prompt),
            trajectories=[Trajectory(ids, logps) for ids, logps in samples],
            adapter_version=0,
        )
        for i, (prompt, samples) in enumerate(zip(prompts, rows, strict=True))
    ]
    base = load_pretrained(tiny_model_dir, resolve_placement("cpu", "bfloat16"))
    assert isinstance(base.get_output_embeddings(), Bf16MatmulLinear)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = collate_groups(groups, pad_token_id=0)
    micro = build_micro_batch(batch, list(range(batch.size)), 0, torch.device("cpu"))
    with torch.no_grad():
        trainer_b_T = PolicyForward(model).score(micro).logp_b_T
    mask_b_T = batch.mask_B_T[micro.rows, : micro.width]
    sampler_b_T = batch.sampler_logp_B_T[micro.rows, : micro.width]
    assert mask_b_T.sum() > 0
    gaps = (trainer_b_T - sampler_b_T).abs()[mask_b_T > 0]
    assert float(gaps.mean()) < MEAN_GAP and float(gaps.max()) < MAX_GAP, (gaps.mean(), gaps.max())
    assert float((gaps > 0.01).float().mean()) < FAR_FRACTION


def _lora_layer(base: nn.Linear, scale: float) -> nn.Module:
    """``base`` wrapped in a peft LoRA whose B is random at ``scale`` (far below a bf16 step of the output)."""
    model = get_peft_model(nn.Sequential(base), LoraConfig(r=4, target_modules=["0"]))
    generator = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * scale
    return model


@pytest.mark.parametrize("fp32_out", [False, True])
def test_a_small_lora_update_survives_only_with_fp32_activations(fp32_out: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 256, bias=False).to(torch.bfloat16)
    if fp32_out:
        assert fp32_activations(nn.Sequential(linear)) == 1
    x = torch.randn(64, 256)
    with torch.no_grad():
        base_out = linear(x.to(torch.bfloat16)).float()
        model = _lora_layer(linear, 1e-4)
        out = model(x if fp32_out else x.to(torch.bfloat16)).float()
        layer = model.base_model.model[0]
        delta = (
            layer.lora_B["default"](layer.lora_A["default"](x.to(torch.float32))) * layer.scaling["default"]
        )
    relative = float((delta.abs() / base_out.abs().clamp(min=1e-6)).median())
    assert relative < 2**-9  # under half a bf16 step: where plain bf16 rounds the update away
    change = out - base_out
    if fp32_out:
        assert torch.allclose(change, delta, atol=1e-6)
    else:
        assert float((change == 0).float().mean()) > 0.7
