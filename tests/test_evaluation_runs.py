"""Held-out evaluation, promotion, retention and warm starts over real runs on the tiny model.

The session's server (gRPC, Valkey), a real rollout worker (transformers engine) and a real trainer, in
this process and driven one step at a time, so what retention sees at each commit is known: after each
commit the test lets the rollout worker finish the queued evaluations before the next step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from peft import PeftModel
from safetensors.torch import load_file
from support.rollout import ScriptedRewardService, make_adapter, reward_server
from transformers import AutoModelForCausalLM

from policyopt.client import Client, Promotion, Retention, RunHandle
from policyopt.core.settings import Settings
from policyopt.state import LocalAdapterStore
from policyopt.workers.engines.base import AdapterRef, SamplingParams
from policyopt.workers.rollout.worker import RolloutWorker
from policyopt.workers.train.checkpoint import CheckpointStore
from policyopt.workers.train.worker import TrainerWorker

pytestmark = pytest.mark.slow

EVAL_PLAN = {0: 0.5, 2: 0.4, 4: 0.8, 6: 0.85}
"""The judge's score of every eval completion, by the version that sampled it: with beats_best and margin
0.1, version 2 (0.4 <= 0.5 + 0.1) stays unpromoted, 4 (0.8 > 0.6) is promoted, 6 (0.85 <= 0.9) is not."""


@pytest.fixture
def client_a(server) -> Iterator[Client]:
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        yield client


def _settings(server) -> Settings:
    return server.settings.replace(device="cpu", torch_threads=1)


def _step(run: RunHandle, rollout: RolloutWorker, trainer: TrainerWorker) -> None:
    """Roll out until the trainer commits one more version, then finish the queued evaluations."""
    target = run.refresh().version + 1
    for _ in range(40):
        rollout.process_one(block_ms=50)
        assert rollout.wait_scored(timeout_s=60)
        if trainer.train_once(run.run_id, block_ms=50) and run.refresh().version >= target:
            break
    assert run.refresh().version == target
    while rollout.evaluator.run_chunk():
        pass


def test_evaluates_every_two_versions_promotes_by_the_rule_and_keeps_what_retention_says(
    server, client_a: Client, redis_client: redis.Redis, tiny_model_dir: Path
) -> None:
    judge = ScriptedRewardService(
        fn=lambda request, _c: [EVAL_PLAN[request.adapter_version]] * len(request.completions)
    )
    train = ScriptedRewardService()  # completion length
    with reward_server(judge) as judge_address, reward_server(train) as train_address:
        client_a.register_reward_endpoint("length", train_address)
        client_a.register_reward_endpoint("judge", judge_address)
        run = client_a.create_run(
            str(tiny_model_dir), reward_endpoint="length", group_size=2, prompts_per_step=1, max_new_tokens=6,
            learning_rate=1e-3, max_steps=6, seed=3,
            eval_prompts=["Count to three.", "Name a color."], eval_every=2, eval_samples=3,
            eval_reward_endpoint="judge", success_threshold=0.8,
            promotion=Promotion("beats_best", margin=0.1),
            retention=Retention(keep_versions=1, keep_trainer_states=1),
        )  # fmt: skip
        run.submit_prompts([f"Say {i}." for i in range(12)])
        rollout = RolloutWorker(_settings(server), redis_client=redis_client, consumer="eval-test")
        trainer = TrainerWorker(_settings(server), redis_client=redis_client, block_ms=50)
        try:
            while rollout.evaluator.run_chunk():  # the baseline, queued by CreateRun
                pass
            for _ in range(6):
                _step(run, rollout, trainer)
        finally:
            trainer.close()
            rollout.close()

    evals = [e for e in client_a.watch_run(run.run_id) if e.kind.value == "eval"]
    assert [e.version for e in evals] == [0, 2, 4, 6]
    assert [e.metrics["eval/mean"] for e in evals] == pytest.approx([0.5, 0.4, 0.8, 0.85])
    assert all(e.metrics["eval/prompts"] == 2.0 for e in evals)
    assert [e.metrics["eval/pass_at_k"] for e in evals] == [0.0, 0.0, 1.0, 1.0]  # success: reward >= 0.8
    assert {r.adapter_version for r in judge.requests} == {0, 2, 4, 6} and len(
        judge.requests
    ) == 8  # greedy: 1 call per prompt
    promotions = [e.version for e in client_a.watch_run(run.run_id) if e.kind.value == "promotion"]
    assert promotions == [4]
    # retention keep 1: at commit 4 version 1 goes, at commit 5 version 2; 3 is the one unpromoted kept,
    # 4 is promoted, 5 and 6 are within max_staleness (1) of the newest
    listed = {v.version: v for v in run.list_adapters()}
    assert sorted(listed) == [3, 4, 5, 6]
    assert LocalAdapterStore(server.settings.adapter_root).list_versions(run.run_id) == [3, 4, 5, 6]
    assert [v.version for v in run.list_adapters(promoted_only=True)] == [4]
    assert listed[4].promoted and listed[4].eval["eval/mean"] == pytest.approx(0.8)
    assert listed[6].eval["eval/mean"] == pytest.approx(0.85) and not listed[6].promoted
    on_disk = LocalAdapterStore(server.settings.adapter_root).read_manifest(run.run_id, 4)
    assert on_disk.promoted and on_disk.eval["eval/mean"] == pytest.approx(0.8)
    checkpoints = CheckpointStore(Path(server.settings.data_dir) / "checkpoints")
    assert checkpoints.versions(run.run_id) == [6]  # keep_trainer_states=1: the newest only
    info = run.refresh()
    assert (info.promoted_version, info.status.value) == (4, "completed")


def test_stop_at_metric_completes_the_run_with_the_reason(
    server, client_a: Client, redis_client: redis.Redis, tiny_model_dir: Path
) -> None:
    judge = ScriptedRewardService(
        fn=lambda request, _c: [{0: 0.5, 2: 0.95}[request.adapter_version]] * len(request.completions)
    )
    with reward_server(judge) as judge_address, reward_server(ScriptedRewardService()) as train_address:
        client_a.register_reward_endpoint("length", train_address)
        client_a.register_reward_endpoint("judge", judge_address)
        run = client_a.create_run(
            str(tiny_model_dir), reward_endpoint="length", group_size=2, prompts_per_step=1, max_new_tokens=4,
            eval_prompts=["Count to three."], eval_every=2, eval_reward_endpoint="judge",
            promotion=Promotion("threshold", threshold=0.9, stop_at_metric=0.9),
        )  # fmt: skip
        run.submit_prompts([f"Say {i}." for i in range(4)])
        rollout = RolloutWorker(_settings(server), redis_client=redis_client, consumer="stop-test")
        trainer = TrainerWorker(_settings(server), redis_client=redis_client, block_ms=50)
        try:
            while rollout.evaluator.run_chunk():
                pass
            for _ in range(2):
                _step(run, rollout, trainer)
        finally:
            trainer.close()
            rollout.close()
    info = run.refresh()
    assert info.status.value == "completed" and info.version == 2 and info.promoted_version == 2
    assert "reached stop_at_metric 0.9" in info.error
    statuses = [e.message for e in client_a.watch_run(run.run_id) if e.kind.value == "status"]
    assert statuses[-1].startswith("completed: eval mean 0.95 reached stop_at_metric 0.9")


def test_a_warm_start_from_an_uploaded_adapter_samples_and_trains_from_it(
    server, client_a: Client, redis_client: redis.Redis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter_dir = make_adapter(tiny_model_dir, tmp_path / "sft", seed=11)
    uploaded = client_a.upload_adapter(adapter_dir, str(tiny_model_dir))
    assert (uploaded.rank, uploaded.target_modules) == (4, ("q_proj", "v_proj"))
    train = ScriptedRewardService()
    with reward_server(train) as address:
        client_a.register_reward_endpoint("length", address)
        run = client_a.create_run(
            str(tiny_model_dir), reward_endpoint="length", group_size=2, prompts_per_step=1, max_new_tokens=6,
            learning_rate=1e-6, lora_rank=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
            init_adapter=uploaded.init_adapter, max_steps=1,
        )  # fmt: skip
        [root] = run.list_adapters()
        assert (root.version, root.parent) == (0, f"upload:{uploaded.upload_id}")
        assert root.files == uploaded.files  # the adapter's two files, sha256 as uploaded
        assert set(root.files) == {"adapter_config.json", "adapter_model.safetensors"}
        rollout = RolloutWorker(_settings(server), redis_client=redis_client, consumer="warm-test")
        trainer = TrainerWorker(_settings(server), redis_client=redis_client, block_ms=50)
        try:
            state = rollout.store.get_run(run.run_id)
            engine = rollout._engine(state.config)
            prompt_ids = engine.encode_chat("Say 1.")
            version_zero = rollout._adapter(state, 0)
            assert version_zero is not None and version_zero.version == 0
            params = SamplingParams(max_new_tokens=6, seed=5)
            upload_ref = AdapterRef(run_id="sft", version=1, path=adapter_dir)
            [[from_v0]], [[from_upload]], [[from_base]] = (
                engine.sample([prompt_ids], 1, params, ref) for ref in (version_zero, upload_ref, None)
            )
            run.submit_prompts(["Say 1."])
            _step(run, rollout, trainer)
        finally:
            trainer.close()
            rollout.close()

    # version 0 samples exactly as the uploaded adapter does (same tokens, same log-probs), not as the base
    assert from_v0.completion_ids == from_upload.completion_ids
    assert torch.allclose(
        torch.tensor(from_v0.sampler_logprobs), torch.tensor(from_upload.sampler_logprobs), atol=1e-6
    )
    forced = engine_logprobs(tiny_model_dir, adapter_dir, prompt_ids, from_v0.completion_ids)
    base_forced = engine_logprobs(tiny_model_dir, None, prompt_ids, from_v0.completion_ids)
    assert not torch.allclose(forced, base_forced, atol=1e-3), "the upload must change the model"
    assert (from_base.completion_ids != from_v0.completion_ids) or not torch.allclose(
        torch.tensor(from_base.sampler_logprobs), torch.tensor(from_v0.sampler_logprobs), atol=1e-3
    )
    # the trainer started from the upload too: one step at lr 1e-6 stays next to it, far from a fresh LoRA
    uploaded_b = {
        k: v for k, v in load_file(adapter_dir / "adapter_model.safetensors").items() if "lora_B" in k
    }
    version_dir = LocalAdapterStore(server.settings.adapter_root).version_dir(run.run_id, 1)
    trained = load_file(version_dir / "adapter_model.safetensors")
    for key, value in uploaded_b.items():
        assert value.abs().max() > 0.01
        assert torch.allclose(trained[key], value, atol=1e-4), key


def engine_logprobs(
    model_dir: Path, adapter_dir: Path | None, prompt_ids: list[int], completion_ids: list[int]
) -> torch.Tensor:
    """Log-probs of ``completion_ids`` after ``prompt_ids`` under the base (fp32), with the adapter if given."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(ids).logits[0, :-1].float(), dim=-1)
    return logp.gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]
