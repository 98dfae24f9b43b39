"""Evaluation, promotion, uploads and forks through the real server: statuses, lineage, promoted-only."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from policyopt.client import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Promotion,
    ResourceExhausted,
    RewardServer,
    RunHandle,
)
from policyopt.core.types import AdapterManifest, EvalConfig, RunConfig, RunStatus
from policyopt.server import streams
from policyopt.state import LocalAdapterStore
from policyopt.state.evals import EvalStore, EvalTask, PromotionDecision, PromotionRule, PromotionState
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore

TINY_LORA = {"lora_rank": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}
SMALL = {"group_size": 2, "prompts_per_step": 1, "max_new_tokens": 8}


def _peft_dir(
    directory: Path, rank: int = 4, alpha: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets)}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return directory


def _publish(server, r: redis.Redis, run: RunHandle, version: int, work: Path) -> AdapterManifest:
    manifest = AdapterManifest(run_id=run.run_id, version=version, step=version, base_model=run.info.base_model,
                               method="grpo")  # fmt: skip
    files = _peft_dir(work / f"v{version}")
    published = LocalAdapterStore(server.settings.adapter_root).publish(run.run_id, version, files, manifest)
    RunStore(r).commit_step(WorkQueue(r), published, [])
    return published


def _outcome(state: PromotionState, promoted: bool) -> PromotionRule:
    """A rule whose decision is fixed (the evaluator's ``decide`` is tested on its own)."""
    return lambda _current: PromotionDecision(state, promoted)


@pytest.fixture(autouse=True)
def cancel_new_runs(server) -> Iterator[None]:
    """Runs these tests create are cancelled after them, so no rollout worker of a later test evaluates
    their made-up adapters."""
    with Client(server.address, api_key=server.keys["a"], timeout=60) as client:
        before = {r.run_id for r in client.list_runs()}
        yield
        for run in client.list_runs():
            if run.run_id not in before and run.status.value == "running":
                client.cancel(run.run_id)


@pytest.fixture
def model(tiny_model_dir: Path) -> str:
    return str(tiny_model_dir)


@pytest.fixture
def ones(client_a: Client, reward_endpoint: RewardServer) -> str:
    client_a.register_reward_endpoint("ones", reward_endpoint.address)
    return "ones"


def test_an_eval_set_over_the_limit_is_invalid_argument_at_create_and_exhausted_when_added(
    client_a: Client, model: str, ones: str, server
) -> None:
    limit = server.settings.max_eval_prompts
    with pytest.raises(InvalidArgument, match=f"at most {limit}.*POLICYOPT_MAX_EVAL_PROMPTS"):
        client_a.create_run(model, reward_endpoint=ones, eval_prompts=["1 + 1?"] * (limit + 1), **SMALL)
    run = client_a.create_run(model, reward_endpoint=ones, eval_prompts=["1 + 1?"] * (limit - 1), **SMALL)
    assert run.info.eval_prompt_count == limit - 1 and run.info.promoted_version == -1
    assert run.add_eval_prompts(["2 + 2?"], [{"answer": 4}]) == limit
    with pytest.raises(ResourceExhausted, match=f"holds {limit} eval prompts"):
        run.add_eval_prompts(["3 + 3?"])
    assert run.refresh().eval_prompt_count == limit


def test_eval_and_promotion_values_out_of_range_say_what_to_fix(
    client_a: Client, model: str, ones: str
) -> None:
    with pytest.raises(InvalidArgument, match=r"eval.samples must be in \[1, 64\]"):
        client_a.create_run(model, reward_endpoint=ones, eval_prompts=["a?"], eval_samples=0, **SMALL)
    with pytest.raises(InvalidArgument, match="promotion.rule must be one of"):
        client_a.create_run(
            model, reward_endpoint=ones, eval_prompts=["a?"], promotion=Promotion("best"), **SMALL
        )
    with pytest.raises(InvalidArgument, match="promotion needs evaluations"):
        client_a.create_run(model, reward_endpoint=ones, promotion=Promotion("threshold"), **SMALL)
    with pytest.raises(InvalidArgument, match="eval prompts are scored by a reward endpoint"):
        client_a.create_run(model, method="agentic_grpo", eval_prompts=["a?"], **SMALL)
    with pytest.raises(InvalidArgument, match="empty text"):
        client_a.create_run(model, reward_endpoint=ones, eval_prompts=[" "], **SMALL)


def test_an_uploaded_adapter_for_another_base_or_shape_says_what_differs(
    client_a: Client, model: str, ones: str, tmp_path: Path
) -> None:
    other = client_a.upload_adapter(_peft_dir(tmp_path / "other", rank=8, alpha=12), "/no/such/model")
    assert other.rank == 8 and other.target_modules == ("q_proj", "v_proj") and len(other.upload_id) == 64
    assert other.alpha == 12  # from adapter_config.json: what create_run(lora_alpha=...) must say
    with pytest.raises(InvalidArgument) as info:
        client_a.create_run(
            model, reward_endpoint=ones, init_adapter=other.init_adapter, **TINY_LORA, **SMALL
        )
    message = str(info.value)
    assert "base_model is" in message and "'/no/such/model' in the adapter" in message
    assert "lora.rank is 4 here but 8 in the adapter" in message
    assert "target_modules" not in message  # those match


def test_uploads_and_runs_of_another_tenant_are_not_found(
    server,
    client_a: Client,
    client_b: Client,
    model: str,
    ones: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    mine = client_a.upload_adapter(_peft_dir(tmp_path / "mine"), model)
    with pytest.raises(NotFound, match="no such upload"):
        client_b.create_run(
            model, init_adapter=mine.init_adapter, method="agentic_grpo", **TINY_LORA, **SMALL
        )
    run_a = client_a.create_run(model, reward_endpoint=ones, **TINY_LORA, **SMALL)
    _publish(server, redis_client, run_a, 1, tmp_path)
    with pytest.raises(NotFound, match="does not exist"):
        client_b.create_run(
            model, init_adapter=f"{run_a.run_id}@v1", method="agentic_grpo", **TINY_LORA, **SMALL
        )
    with pytest.raises(NotFound, match="has no version 7"):
        client_a.create_run(
            model, reward_endpoint=ones, init_adapter=f"{run_a.run_id}@v7", **TINY_LORA, **SMALL
        )
    with pytest.raises(InvalidArgument, match="must be 'RUN@vN'"):
        client_a.create_run(model, reward_endpoint=ones, init_adapter="somewhere", **TINY_LORA, **SMALL)


def test_an_upload_with_a_wrong_sha256_or_file_name_is_refused(
    client_a: Client, model: str, tmp_path: Path
) -> None:
    from policyopt.client import _calls

    call = _calls.upload_adapter(_peft_dir(tmp_path / "a"), model)
    call.requests[-1].sha256 = "0" * 64
    with pytest.raises(InvalidArgument, match="adapter_model.safetensors arrived with sha256"):
        client_a._upload(call)
    call = _calls.upload_adapter(tmp_path / "a", model)
    call.requests[0].file_name = "../adapter_config.json"
    with pytest.raises(InvalidArgument, match="is not accepted"):
        client_a._upload(call)


def test_a_fork_records_its_parent_and_a_second_fork_reads_the_lineage(
    server, client_a: Client, model: str, ones: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    parent = client_a.create_run(model, reward_endpoint=ones, **TINY_LORA, **SMALL)
    published = _publish(server, redis_client, parent, 1, tmp_path)
    fork = client_a.create_run(
        model, reward_endpoint=ones, init_adapter=f"{parent.run_id}@v1", **TINY_LORA, **SMALL
    )
    assert fork.info.init_adapter == f"{parent.run_id}@v1"
    [root] = fork.list_adapters()
    assert (root.version, root.parent) == (0, f"{parent.run_id}@v1")
    assert root.files["adapter_model.safetensors"] == published.files["adapter_model.safetensors"]
    on_disk = LocalAdapterStore(server.settings.adapter_root).read_manifest(fork.run_id, 0)
    assert on_disk.parent == f"{parent.run_id}@v1"
    grandchild = client_a.create_run(
        model, reward_endpoint=ones, init_adapter=f"{fork.run_id}@v0", **TINY_LORA, **SMALL
    )
    lineage, run_id, version = [], grandchild.run_id, 0
    while True:  # walk the parents back to a run that started fresh
        [manifest] = [v for v in client_a.list_adapters(run_id) if v.version == version]
        lineage.append(f"{run_id}@v{version}")
        if not manifest.parent:
            break
        run_id, _, tail = manifest.parent.partition("@v")
        version = int(tail)
    assert lineage == [f"{grandchild.run_id}@v0", f"{fork.run_id}@v0", f"{parent.run_id}@v1"]
    pulled = fork.pull_adapter(0, tmp_path / "pulled")  # a fork's version 0 is on disk, and pullable
    assert pulled.name == "v000000"
    assert (pulled / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "v1" / "adapter_model.safetensors"
    ).read_bytes()
    with pytest.raises(NotFound, match="has no adapter version 0: it started from its base model"):
        parent.pull_adapter(0, tmp_path / "none")


def test_promoted_only_lists_and_watches_promoted_versions(
    server, client_a: Client, model: str, ones: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = client_a.create_run(model, reward_endpoint=ones, eval_prompts=["1 + 1?"], **SMALL)
    for version in (1, 2, 3):
        _publish(server, redis_client, run, version, tmp_path)
    evals = EvalStore(redis_client)
    seen: list[int] = []
    watcher = threading.Thread(
        target=lambda: seen.extend(v.version for v in _first(run.watch_adapters(promoted_only=True), 1))
    )
    watcher.start()
    runs = RunStore(redis_client)
    evals.finish(runs, run.run_id, 1, {"eval/mean": 0.2}, _outcome(PromotionState(promoted=-1), False))
    evals.finish(runs, run.run_id, 2, {"eval/mean": 0.6}, _outcome(PromotionState(promoted=2), True))
    watcher.join(timeout=20)
    assert seen == [2]
    assert [v.version for v in run.list_adapters(promoted_only=True)] == [2]
    versions = {v.version: v for v in run.list_adapters()}
    assert versions[1].eval == {"eval/mean": 0.2} and not versions[1].promoted and versions[2].promoted
    assert run.refresh().promoted_version == 2
    listed = {info.run_id: info for info in client_a.list_runs()}[run.run_id]
    assert (listed.promoted_version, listed.eval_prompt_count) == (2, 1)  # ListRuns says what GetRun says
    cancelled = run.cancel()  # the run has ended: its watch returns every event and ends
    assert (cancelled.promoted_version, cancelled.eval_prompt_count) == (2, 1)
    events = [e for e in client_a.watch_run(run.run_id) if e.kind.value in ("eval", "promotion")]
    assert [(e.kind.value, e.version) for e in events] == [("eval", 1), ("eval", 2), ("promotion", 2)]
    assert events[1].metrics == {"eval/mean": 0.6}


def _first(iterator, count: int):
    for i, item in enumerate(iterator):
        yield item
        if i + 1 >= count:
            return


def test_eval_prompts_added_to_a_run_without_them_queue_its_baseline(
    client_a: Client, model: str, ones: str, redis_client: redis.Redis
) -> None:
    run = client_a.create_run(model, reward_endpoint=ones, eval_every=3, **SMALL)
    evals = EvalStore(redis_client)
    assert run.info.eval_prompt_count == 0 and not evals.pending(run.run_id)
    assert run.add_eval_prompts(["1 + 1?", "2 + 2?"]) == 2
    assert evals.pending(run.run_id)  # version 0's evaluation, the baseline beats_best compares with
    run.add_eval_prompts(["3 + 3?"])
    queued = [t for t in evals.queued_tasks() if t.run_id == run.run_id]
    assert queued == [EvalTask(run.run_id, 0)]


def test_add_eval_prompts_needs_a_run_that_evaluates(client_a: Client, model: str, ones: str) -> None:
    run = client_a.create_run(model, reward_endpoint=ones, **SMALL)
    with pytest.raises(FailedPrecondition, match="created without evaluation"):
        run.add_eval_prompts(["1 + 1?"])


def test_the_async_client_uploads_and_adds_eval_prompts(
    server, model: str, ones: str, tmp_path: Path
) -> None:
    import asyncio

    from policyopt.client import AsyncClient

    async def main() -> tuple[str, int, list[int]]:
        async with AsyncClient(server.address, api_key=server.keys["a"], timeout=60) as client:
            uploaded = await client.upload_adapter(_peft_dir(tmp_path / "lora"), model)
            run = await client.create_run(
                model, reward_endpoint=ones, eval_prompts=["1 + 1?"], init_adapter=uploaded.init_adapter,
                **TINY_LORA, **SMALL,
            )  # fmt: skip
            count = await run.add_eval_prompts(["2 + 2?"])
            versions = [v.version for v in await run.list_adapters(promoted_only=False)]
            return uploaded.init_adapter, count, versions

    init_adapter, count, versions = asyncio.run(main())
    assert init_adapter.startswith("upload:") and count == 2 and versions == [0]


def test_a_promoted_only_watch_of_an_ended_run_waits_for_its_evaluation_in_progress(
    fresh_redis: redis.Redis,
) -> None:
    store, evals = RunStore(fresh_redis), EvalStore(fresh_redis)
    run = store.create_run("a", RunConfig(base_model="tiny", eval=EvalConfig(every=2)))
    manifest = AdapterManifest(run_id=run.run_id, version=2, step=2, base_model="tiny", method="grpo")
    store.commit_step(WorkQueue(fresh_redis), manifest, [], evaluation=EvalTask(run.run_id, 2))
    claimed = evals.claim("worker", claim_idle_ms=60000)  # a rollout worker is mid-chunk ...
    assert claimed is not None and claimed.task == EvalTask(run.run_id, 2)
    store.set_status(run.run_id, RunStatus.COMPLETED)  # ... when the run reaches max_steps
    seen: list[int] = []
    watch = streams.promoted_versions(evals, store, run.run_id, 0, lambda: True, poll_ms=50)
    watcher = threading.Thread(target=lambda: seen.extend(m.version for m in watch))
    watcher.start()
    watcher.join(timeout=0.5)
    assert watcher.is_alive()  # the chunk in progress may still promote a version
    evals.finish(
        store, run.run_id, 2, {"eval/mean": 0.9}, _outcome(PromotionState(promoted=2), True), claimed=claimed
    )
    watcher.join(timeout=10)
    assert not watcher.is_alive() and seen == [2]
