"""serving-sync --promoted-only against a real vLLM CPU server: only promoted versions are ever served."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from support.vllm import Publisher, wait_until

from policyopt.cli.main import main as cli_main
from policyopt.state.evals import EvalStore, PromotionDecision, PromotionRule, PromotionState
from policyopt.state.runs import RunStore
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.serving import ServingSync

pytestmark = pytest.mark.vllm

FOLLOW_TIMEOUT_S = 60.0


def _outcome(state: PromotionState, promoted: bool) -> PromotionRule:
    return lambda _current: PromotionDecision(state, promoted)


def _managed(server: VLLMServer, run_id: str) -> set[str]:
    return {name for name in server.client().loaded_adapters() if name.startswith(run_id + "@")}


def test_promoted_only_serves_a_version_once_promoted_and_never_the_others(
    fresh_redis: redis.Redis,
    adapter_root: Path,
    vllm_server: VLLMServer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    publisher = Publisher(fresh_redis, adapter_root, tiny_model_dir, tmp_path / "staging")
    evals, run_id = EvalStore(fresh_redis), publisher.run_id
    publisher.publish(1)
    promoted = PromotionState(base=0.2, best=0.5, best_version=1, promoted=1, promoted_best=0.5)
    runs = RunStore(fresh_redis)
    evals.finish(runs, run_id, 1, {"eval/mean": 0.5}, _outcome(promoted, True))  # as the evaluator records it
    sync = ServingSync(
        fresh_redis,
        adapter_root,
        [vllm_server.url],
        run_id=run_id,
        reconcile_interval_s=0.5,
        promoted_only=True,
    )
    stop = threading.Event()
    thread = threading.Thread(target=sync.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: _managed(vllm_server, run_id) == {f"{run_id}@v1"}, FOLLOW_TIMEOUT_S)
        publisher.publish(2)
        publisher.publish(3)
        evals.finish(runs, run_id, 2, {"eval/mean": 0.3}, _outcome(promoted, False))  # evaluated, not better
        time.sleep(2.0)  # several reconciles: an unpromoted version must not appear
        assert _managed(vllm_server, run_id) == {f"{run_id}@v1"}
        evals.finish(
            runs, run_id, 3, {"eval/mean": 0.9}, _outcome(PromotionState(promoted=3, promoted_best=0.9), True)
        )
        assert wait_until(lambda: _managed(vllm_server, run_id) == {f"{run_id}@v3"}, FOLLOW_TIMEOUT_S)
        completion = vllm_server.client().completions(
            {"model": f"{run_id}@v3", "prompt": "hi", "max_tokens": 2}
        )
        assert completion["choices"][0]["text"] is not None
    finally:
        stop.set()
        thread.join(10)
    assert [s.name for s in sync.served] == [f"{run_id}@v3"]  # promotions seen live (v1 came at startup)


def test_pull_mode_promoted_only_once_serves_the_newest_promoted_version(
    server: Any, redis_client: redis.Redis, vllm_server: VLLMServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    publisher = Publisher(
        redis_client, server.settings.adapter_root, tiny_model_dir, tmp_path / "staging", tenant="a"
    )
    run_id, evals = publisher.run_id, EvalStore(redis_client)
    for version in (1, 2, 3):
        publisher.publish(version)
    runs, state = RunStore(redis_client), PromotionState(promoted=2, promoted_best=0.7)
    evals.finish(runs, run_id, 2, {"eval/mean": 0.7}, _outcome(state, True))
    pull_to = tmp_path / "pulled"
    args = ["--address", server.address, "--api-key", "key-a", "serving-sync", "--vllm", vllm_server.url]
    assert cli_main([*args, "--run", run_id, "--pull-to", str(pull_to), "--promoted-only", "--once"]) == 0
    try:
        assert _managed(vllm_server, run_id) == {f"{run_id}@v2"}  # not v3, the newest published
        assert sorted(p.name for p in (pull_to / run_id).iterdir()) == ["v000002"]
    finally:
        vllm_server.client().unload_lora(f"{run_id}@v2")
