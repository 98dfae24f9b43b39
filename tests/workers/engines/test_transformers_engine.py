"""TransformersEngine on a tiny Llama: sampler log-probs, EOS handling, greedy decoding, LoRA versions.

Tolerance: sampler log-probs match a teacher-forced forward pass of the same weights within 1e-4 nats
(fp32 on CPU; the measured gap is about 5e-7, from KV-cache vs full-sequence attention).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.rollout import make_adapter

from policyopt.workers.engines import AdapterRef, SamplingParams, create_engine
from policyopt.workers.engines.transformers_engine import TransformersEngine
from policyopt.workers.placement import load_model, resolve_placement

LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    built = create_engine("transformers", tiny_model_dir, device="cpu", dtype="float32")
    assert isinstance(built, TransformersEngine)
    return built


def teacher_forced_logp(
    model: torch.nn.Module, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0
) -> torch.Tensor:
    ids_1_L = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits_T_V = model(input_ids=ids_1_L).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits_T_V, -1).gather(1, torch.tensor(completion_ids)[:, None]).squeeze(1)


def prompts_of_two_lengths(engine: TransformersEngine) -> list[list[int]]:
    short, long = engine.encode_chat("hi"), engine.encode_chat("What is 12 + 30? Reply with just the number.")
    assert len(short) < len(long)  # the short one is left-padded in the batch
    return [short, long]


def test_sampler_logprobs_match_a_teacher_forced_forward_pass(
    engine: TransformersEngine, tiny_model_dir: Path
) -> None:
    prompts = prompts_of_two_lengths(engine)
    groups = engine.sample(prompts, 3, SamplingParams(max_new_tokens=12, seed=0))
    model, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    assert [len(g) for g in groups] == [3, 3]
    for prompt_ids, group in zip(prompts, groups, strict=True):
        for sample in group:
            assert len(sample.sampler_logprobs) == len(sample.completion_ids) > 0
            expected_T = teacher_forced_logp(model, prompt_ids, sample.completion_ids)
            assert torch.allclose(torch.tensor(sample.sampler_logprobs), expected_T, atol=LOGPROB_TOLERANCE)


def test_logprobs_are_those_of_the_processed_distribution(
    engine: TransformersEngine, tiny_model_dir: Path
) -> None:
    """With temperature T the log-probs are log_softmax(logits / T); top-p renormalizes over the nucleus."""
    prompt = prompts_of_two_lengths(engine)[1]
    model, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    tempered = engine.sample([prompt], 2, SamplingParams(max_new_tokens=10, temperature=0.7, seed=1))[0]
    for sample in tempered:
        expected_T = teacher_forced_logp(model, prompt, sample.completion_ids, temperature=0.7)
        assert torch.allclose(torch.tensor(sample.sampler_logprobs), expected_T, atol=LOGPROB_TOLERANCE)
    nucleus = engine.sample([prompt], 2, SamplingParams(max_new_tokens=10, top_p=0.5, seed=2))[0]
    for sample in nucleus:
        full_T = teacher_forced_logp(model, prompt, sample.completion_ids)
        assert (torch.tensor(sample.sampler_logprobs) >= full_T - LOGPROB_TOLERANCE).all()
        assert (torch.tensor(sample.sampler_logprobs) <= 0).all()


def test_greedy_follows_the_argmax(engine: TransformersEngine, tiny_model_dir: Path) -> None:
    prompt = prompts_of_two_lengths(engine)[0]
    (sample,) = engine.greedy([prompt], 8)
    model, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    ids_1_L = torch.tensor([prompt + sample.completion_ids])
    with torch.no_grad():
        logits_T_V = model(input_ids=ids_1_L).logits[0, len(prompt) - 1 : -1]
    assert logits_T_V.argmax(-1).tolist() == sample.completion_ids


def test_completions_stop_at_eos_and_carry_no_padding(engine: TransformersEngine) -> None:
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    cut = engine._to_sample(torch.tensor([7, 8, eos, pad, pad]), torch.tensor([-1.0, -2.0, -3.0, 0.0, 0.0]))
    assert (cut.completion_ids, cut.sampler_logprobs, cut.finish_reason) == (
        [7, 8, eos],
        [-1.0, -2.0, -3.0],
        "stop",
    )
    full = engine._to_sample(torch.tensor([7, 8, 9]), torch.tensor([-1.0, -2.0, -3.0]))
    assert (full.completion_ids, full.finish_reason) == ([7, 8, 9], "length")
    for group in engine.sample(prompts_of_two_lengths(engine), 4, SamplingParams(max_new_tokens=24, seed=3)):
        for sample in group:
            if sample.finish_reason == "stop":
                assert sample.completion_ids.index(eos) == len(sample.completion_ids) - 1
            else:
                assert len(sample.completion_ids) == 24 and eos not in sample.completion_ids


def test_adapter_versions_are_loaded_swapped_and_bypassed(
    engine: TransformersEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    v1 = AdapterRef("run-a", 1, make_adapter(tiny_model_dir, tmp_path / "v000001", seed=1))
    v2 = AdapterRef("run-a", 2, make_adapter(tiny_model_dir, tmp_path / "v000002", seed=2))
    prompt = prompts_of_two_lengths(engine)[1]
    params = SamplingParams(max_new_tokens=10, seed=4)
    with_v1 = engine.sample([prompt], 2, params, v1)[0]
    with_v2 = engine.sample([prompt], 2, params, v2)[0]
    assert list(engine._adapters) == ["run-a@v1", "run-a@v2"]  # the version before may still be sampled
    v3 = AdapterRef("run-a", 3, make_adapter(tiny_model_dir, tmp_path / "v000003", seed=3))
    engine.sample([prompt], 2, params, v3)
    assert list(engine._adapters) == ["run-a@v2", "run-a@v3"]  # beyond the run's two newest: dropped
    base, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    lora = PeftModel.from_pretrained(base, str(v2.path)).eval()
    for sample in with_v2:
        expected_T = teacher_forced_logp(lora, prompt, sample.completion_ids)
        assert torch.allclose(torch.tensor(sample.sampler_logprobs), expected_T, atol=LOGPROB_TOLERANCE)
    plain, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    for sample in engine.sample([prompt], 2, params, None)[0]:  # adapter loaded but bypassed
        expected_T = teacher_forced_logp(plain, prompt, sample.completion_ids)
        assert torch.allclose(torch.tensor(sample.sampler_logprobs), expected_T, atol=LOGPROB_TOLERANCE)
    assert [s.sampler_logprobs for s in with_v1] != [s.sampler_logprobs for s in with_v2]


def test_rows_that_finish_early_leave_the_batch_and_the_others_stay_exact(tiny_model_dir: Path) -> None:
    """Half the vocabulary counts as EOS here, so rows stop after 1, 2, 3... tokens and leave the batch and its
    KV cache at different steps; every row's log-probs must still be those of its own sequence."""
    engine = TransformersEngine(tiny_model_dir, device="cpu", dtype="float32")
    vocab = int(engine._base.config.vocab_size)
    engine._eos_ids = sorted(set(engine._eos_ids) | set(range(0, vocab, 2)))
    prompts = prompts_of_two_lengths(engine)
    groups = engine.sample(prompts, 6, SamplingParams(max_new_tokens=10, seed=7))
    model, _ = load_model(tiny_model_dir, resolve_placement("cpu", "float32"))
    lengths = sorted(len(s.completion_ids) for g in groups for s in g)
    assert lengths[0] < lengths[-1] and len(set(lengths)) >= 3  # rows left at several different steps
    for prompt_ids, group in zip(prompts, groups, strict=True):
        for sample in group:
            expected_T = teacher_forced_logp(model, prompt_ids, sample.completion_ids)
            assert torch.allclose(torch.tensor(sample.sampler_logprobs), expected_T, atol=LOGPROB_TOLERANCE)
    batched = engine.greedy(prompts, 10)
    alone = [engine.greedy([prompt], 10)[0] for prompt in prompts]
    assert [s.completion_ids for s in batched] == [s.completion_ids for s in alone]


def test_the_inverse_cdf_draw_follows_the_distribution() -> None:
    from policyopt.workers.engines.transformers_engine import _draw

    probs_V = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    torch.manual_seed(0)
    logp_A_V = torch.log(probs_V).expand(20000, -1)
    drawn_A = _draw(logp_A_V)
    frequency_V = torch.bincount(drawn_A, minlength=5).double() / drawn_A.numel()
    assert frequency_V[1] == 0  # a zero-probability token is never drawn
    assert torch.allclose(frequency_V, probs_V.double(), atol=0.015)  # over 4 standard errors at p=0.5


def test_an_unknown_engine_name_lists_the_known_ones(tiny_model_dir: Path) -> None:
    from policyopt.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="known engines: .*transformers"):
        create_engine("nope", tiny_model_dir)
