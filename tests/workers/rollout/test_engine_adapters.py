"""TransformersEngine's adapter cache: several runs' adapters stay loaded on one base, each batch uses its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.rollout import make_adapter

from policyopt.workers.engines import AdapterRef
from policyopt.workers.engines.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("loras")
    return [make_adapter(tiny_model_dir, root / f"lora{seed}", seed=seed) for seed in range(3)]


def counting_loads(engine: TransformersEngine) -> list[str]:
    loads: list[str] = []
    load = engine._load_adapter

    def counted(adapter: AdapterRef):  # type: ignore[no-untyped-def]
        loads.append(adapter.name)
        return load(adapter)

    engine._load_adapter = counted  # type: ignore[method-assign]
    return loads


def test_each_runs_adapter_stays_loaded_and_each_batch_uses_its_own(
    tiny_model_dir: Path, adapter_dirs: list[Path]
) -> None:
    engine = TransformersEngine(tiny_model_dir, device="cpu", dtype="float32")
    loads = counting_loads(engine)
    runs = [AdapterRef(f"run-{i}", 1, path) for i, path in enumerate(adapter_dirs)]
    prompt = engine.encode_chat("What is 2 + 2?")
    base = engine.greedy([prompt], 6)[0]
    first = {ref.run_id: engine.greedy([prompt], 6, ref)[0] for ref in runs}
    for _ in range(2):  # interleaved batches of the three runs: no reload, the same output per run
        for ref in runs:
            assert engine.greedy([prompt], 6, ref)[0] == first[ref.run_id]
    assert engine.greedy([prompt], 6)[0] == base  # the base model still samples without an adapter
    assert loads == [ref.name for ref in runs]
    assert sorted(engine.loaded_adapters) == sorted(ref.name for ref in runs)
    logprobs = {tuple(s.sampler_logprobs) for s in [base, *first.values()]}
    assert len(logprobs) == 4  # each adapter changes the model its own way


def test_a_run_keeps_its_newest_versions_and_the_lru_cap_evicts_other_runs(
    tiny_model_dir: Path, adapter_dirs: list[Path]
) -> None:
    engine = TransformersEngine(tiny_model_dir, device="cpu", dtype="float32", max_loaded_adapters=3)
    prompt = engine.encode_chat("hi")
    for version in (1, 2, 3):
        engine.greedy([prompt], 2, AdapterRef("run-a", version, adapter_dirs[0]))
    assert engine.loaded_adapters == ["run-a@v2", "run-a@v3"]  # v1 made room: two versions per run
    engine.greedy([prompt], 2, AdapterRef("run-b", 1, adapter_dirs[1]))
    engine.greedy([prompt], 2, AdapterRef("run-a", 3, adapter_dirs[0]))  # run-a is the most recent again
    engine.greedy([prompt], 2, AdapterRef("run-c", 1, adapter_dirs[2]))
    assert engine.loaded_adapters == ["run-b@v1", "run-a@v3", "run-c@v1"]  # LRU run-a@v2 went first
