"""Test helpers for the rollout tests: a real gRPC RewardService hosted in the test process, runs, prompts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
import torch
from google.protobuf import json_format

from policyopt.core.settings import Settings
from policyopt.core.types import (
    EventKind,
    MethodChoice,
    PromptTask,
    RewardEndpointInfo,
    RunConfig,
    TrajectoryGroup,
    from_json,
)
from policyopt.state.queue import WorkQueue, groups_stream
from policyopt.state.runs import RunStore
from policyopt.v1 import reward_pb2, reward_pb2_grpc
from policyopt.workers.algorithms import pin_method, resolve_method
from policyopt.workers.placement import load_model, resolve_placement
from policyopt.workers.rollout.worker import RolloutWorker

ScoreFn = Callable[[reward_pb2.ScoreRequest, grpc.ServicerContext], list[float]]


def length_score(request: reward_pb2.ScoreRequest, _context: grpc.ServicerContext) -> list[float]:
    """A finite, varied score: the completion's length in characters."""
    return [float(len(c)) for c in request.completions]


@dataclass
class ScriptedRewardService(reward_pb2_grpc.RewardServiceServicer):
    """RewardService whose behaviour the test sets with ``fn``; it records every request it answers."""

    fn: ScoreFn = length_score
    requests: list[reward_pb2.ScoreRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> reward_pb2.ScoreResponse:  # noqa: N802
        with self.lock:
            self.requests.append(request)
        return reward_pb2.ScoreResponse(scores=self.fn(request, context))

    def metadata_of(self, index: int) -> dict[str, object]:
        return json_format.MessageToDict(self.requests[index].metadata)


@contextlib.contextmanager
def reward_server(service: ScriptedRewardService, port: int = 0, workers: int = 4) -> Iterator[str]:
    """Host ``service`` on ``port`` (0: a free one); yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    reward_pb2_grpc.add_RewardServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def dead_address() -> str:
    """An address where nothing listens (a port that was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def flaky(failures: int, code: grpc.StatusCode, then: ScoreFn = length_score) -> ScoreFn:
    """Abort the first ``failures`` calls with ``code``, then answer with ``then``."""
    calls = {"n": 0}

    def fn(request: reward_pb2.ScoreRequest, context: grpc.ServicerContext) -> list[float]:
        calls["n"] += 1
        if calls["n"] <= failures:
            context.abort(code, f"scripted failure {calls['n']}")
        return then(request, context)

    return fn


def slow(seconds: float) -> ScoreFn:
    def fn(request: reward_pb2.ScoreRequest, context: grpc.ServicerContext) -> list[float]:
        time.sleep(seconds)
        return length_score(request, context)

    return fn


def hanging(release: threading.Event) -> ScoreFn:
    """Never answer until ``release`` is set (then answer normally)."""

    def fn(request: reward_pb2.ScoreRequest, context: grpc.ServicerContext) -> list[float]:
        release.wait()
        return length_score(request, context)

    return fn


def aborting(code: grpc.StatusCode) -> ScoreFn:
    def fn(request: reward_pb2.ScoreRequest, context: grpc.ServicerContext) -> list[float]:
        context.abort(code, "scripted permanent failure")
        return []

    return fn


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA directory with random (non-zero) A and B, so it visibly changes the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model, _ = load_model(model_dir, resolve_placement("cpu", "float32"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


TENANT = "acme"


def make_worker(
    settings: Settings, fresh_redis: redis.Redis, consumer: str = "w1", **overrides: object
) -> RolloutWorker:
    worker = RolloutWorker(settings.replace(**overrides), redis_client=fresh_redis, consumer=consumer)
    worker.rewards.backoff_s = 0.01
    return worker


def process(worker: RolloutWorker, block_ms: int = 100) -> int:
    """One claim round, then wait for its groups to be scored; returns how many prompts were claimed."""
    claimed = worker.process_one(block_ms=block_ms)
    assert worker.wait_scored(timeout_s=60)
    return claimed


def create_run(
    fresh_redis: redis.Redis, tiny_model_dir: Path, address: str, endpoint: str = "ep", **config: object
) -> str:
    store = RunStore(fresh_redis)
    store.register_endpoint(TENANT, RewardEndpointInfo(endpoint, address))
    """A run as CreateRun stores it: its method (grpo unless ``method=`` says) resolved and pinned."""
    values: dict[str, Any] = {"group_size": 3, "max_new_tokens": 6, "method": MethodChoice("grpo"), **config}
    values["resolved_method"] = pin_method(resolve_method(values["method"]))
    run_config = RunConfig(base_model=str(tiny_model_dir), reward_endpoint=endpoint, **values)
    return store.create_run(TENANT, run_config).run_id


def submit(
    fresh_redis: redis.Redis, run_id: str, n: int = 1, prefix: str = "p", trace: dict[str, str] | None = None
) -> list[str]:
    tasks = [
        PromptTask(
            run_id=run_id,
            prompt_id=f"{prefix}{i}",
            prompt=f"What is {i} + 2?",
            metadata={"answer": str(i + 2)},
            trace=trace or {},
        )
        for i in range(n)
    ]
    return WorkQueue(fresh_redis).enqueue_prompts(tasks)


def queued_groups(fresh_redis: redis.Redis, run_id: str) -> list[TrajectoryGroup]:
    return [
        from_json(TrajectoryGroup, fields[b"data"])
        for _id, fields in fresh_redis.xrange(groups_stream(run_id))
    ]


def pending_prompts(fresh_redis: redis.Redis, run_id: str) -> int:
    return WorkQueue(fresh_redis).pending_prompts(run_id)


def error_messages(fresh_redis: redis.Redis, run_id: str) -> list[str]:
    return [e.message for e in RunStore(fresh_redis).read_events(run_id) if e.kind == EventKind.ERROR]
