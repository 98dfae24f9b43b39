"""The vLLM rollout engine against a real vLLM CPU server on the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from support.vllm import LOGPROB_TOLERANCE, recompute_logprobs, write_lora

from policyopt.workers.engines import AdapterRef, SamplingParams, create_engine
from policyopt.workers.engines.vllm_engine import VLLMEngine
from policyopt.workers.engines.vllm_launch import VLLMServer

pytestmark = pytest.mark.vllm


@pytest.fixture
def engine(vllm_server: VLLMServer, tiny_model_dir: Path) -> VLLMEngine:
    made = create_engine("vllm", tiny_model_dir, urls=[vllm_server.url], max_loaded_adapters=2, device="cpu")
    assert isinstance(made, VLLMEngine)
    return made


@pytest.fixture
def adapter_v1(tiny_model_dir: Path, tmp_path: Path) -> AdapterRef:
    return AdapterRef("engine-run", 1, write_lora(tiny_model_dir, tmp_path / "v1", seed=1))


def test_version_is_served_by_its_name_with_outputs_different_from_the_base(
    engine: VLLMEngine, adapter_v1: AdapterRef, vllm_server: VLLMServer
) -> None:
    prompts = [engine.encode_chat("What is 2 + 3?"), engine.encode_chat("hello world")]
    base = engine.greedy(prompts, 12)
    tuned = engine.greedy(prompts, 12, adapter=adapter_v1)
    assert adapter_v1.name in vllm_server.client().loaded_adapters()
    assert [s.completion_ids for s in tuned] != [s.completion_ids for s in base]
    assert all(len(s.completion_ids) == len(s.sampler_logprobs) > 0 for s in tuned)


@pytest.mark.parametrize(
    ("params", "transform"),
    [
        (SamplingParams(max_new_tokens=24, seed=7), lambda logits: logits),
        (SamplingParams(max_new_tokens=24, temperature=0.7, seed=7), lambda logits: logits / 0.7),
    ],
    ids=["temperature-1", "temperature-0.7"],
)
def test_sampler_logprobs_match_a_transformers_peft_forward_pass(
    engine: VLLMEngine,
    adapter_v1: AdapterRef,
    tiny_model_dir: Path,
    params: SamplingParams,
    transform: object,
) -> None:
    """The stored log-probs are the processed ones (after temperature) that the trainer recomputes."""
    prompt = engine.encode_chat("What is 12 + 30? reply with just the number")
    samples = engine.sample([prompt], 4, params, adapter=adapter_v1)[0]
    diffs = []
    for sample in samples:
        expected = recompute_logprobs(
            tiny_model_dir, adapter_v1.path, prompt, sample.completion_ids, transform
        )  # type: ignore[arg-type]
        diffs.append((torch.tensor(sample.sampler_logprobs) - expected).abs())
    diff = torch.cat(diffs)
    print(
        f"log-prob |vLLM - transformers+peft|: max {diff.max():.2e} mean {diff.mean():.2e} over {diff.numel()} tokens"
    )
    assert diff.numel() >= 4
    assert diff.max() < LOGPROB_TOLERANCE


def test_seeded_samples_are_not_shared_between_prompts(engine: VLLMEngine) -> None:
    prompt = engine.encode_chat("What is 2 + 3?")
    rows = engine.sample([prompt, prompt], 2, SamplingParams(max_new_tokens=16, seed=3))
    ids = [s.completion_ids for row in rows for s in row]
    assert len({tuple(i) for i in ids}) == 4
    again = engine.sample([prompt, prompt], 2, SamplingParams(max_new_tokens=16, seed=3))
    assert [s.completion_ids for row in again for s in row] == ids


def test_versions_beyond_the_staleness_window_are_unloaded(
    engine: VLLMEngine, tiny_model_dir: Path, tmp_path: Path, vllm_server: VLLMServer
) -> None:
    prompt = [engine.encode_chat("hello")]
    refs = [
        AdapterRef("stale-run", v, write_lora(tiny_model_dir, tmp_path / f"v{v}", seed=v)) for v in (1, 2, 3)
    ]
    for ref in refs:
        engine.sample(prompt, 1, SamplingParams(max_new_tokens=2), adapter=ref)
    loaded = {n for n in vllm_server.client().loaded_adapters() if n.startswith("stale-run@")}
    assert loaded == {"stale-run@v2", "stale-run@v3"}


def test_a_name_whose_files_changed_is_reloaded_not_served_from_cache(
    engine: VLLMEngine, tiny_model_dir: Path, tmp_path: Path, vllm_server: VLLMServer
) -> None:
    prompt = [engine.encode_chat("What is 7 + 8?")]
    path = write_lora(tiny_model_dir, tmp_path / "same-path", seed=11)
    ref = AdapterRef("cache-run", 1, path)
    before = engine.greedy(prompt, 10, adapter=ref)[0]
    shutil.rmtree(path)
    write_lora(tiny_model_dir, path, seed=12)  # same name, same path, other weights
    after = engine.greedy(prompt, 10, adapter=ref)[0]
    reference = AdapterRef("cache-run-reference", 1, write_lora(tiny_model_dir, tmp_path / "ref", seed=12))
    expected = engine.greedy(prompt, 10, adapter=reference)[0]
    assert after.completion_ids == expected.completion_ids
    assert after.sampler_logprobs == pytest.approx(expected.sampler_logprobs, abs=1e-5)
    assert after.sampler_logprobs != pytest.approx(before.sampler_logprobs, abs=1e-5)


def test_engine_reloads_a_version_unloaded_behind_its_back(
    engine: VLLMEngine, adapter_v1: AdapterRef, vllm_server: VLLMServer
) -> None:
    """What a vLLM restart looks like to the engine: the name it loaded is gone (HTTP 404)."""
    prompt = [engine.encode_chat("hello")]
    first = engine.greedy(prompt, 6, adapter=adapter_v1)[0]
    assert vllm_server.client().unload_lora(adapter_v1.name)
    again = engine.greedy(prompt, 6, adapter=adapter_v1)[0]
    assert again.completion_ids == first.completion_ids
    assert adapter_v1.name in vllm_server.client().loaded_adapters()


def test_prompts_are_split_across_urls_and_kept_in_order(
    vllm_server: VLLMServer, tiny_model_dir: Path
) -> None:
    engine = VLLMEngine(tiny_model_dir, urls=[vllm_server.url, vllm_server.url + "/"])
    prompts = [engine.encode_chat(text) for text in ("a", "what is 1 + 1?", "hello world", "b c")]
    split = engine.greedy(prompts, 5)
    single = [engine.greedy([p], 5)[0] for p in prompts]
    assert [s.completion_ids for s in split] == [s.completion_ids for s in single]


def test_a_prompt_longer_than_the_context_is_refused_with_a_fix(engine: VLLMEngine) -> None:
    from policyopt.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="shorten it"):
        engine.sample([[5] * 600], 1, SamplingParams(max_new_tokens=4))
