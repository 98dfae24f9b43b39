"""Test helpers for the rollout tests: a real gRPC RewardService hosted in the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from google.protobuf import json_format

from policyopt.v1 import reward_pb2, reward_pb2_grpc
from policyopt.workers.placement import load_model, resolve_placement

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
def reward_server(service: ScriptedRewardService) -> Iterator[str]:
    """Host ``service`` on a free local port; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reward_pb2_grpc.add_RewardServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
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


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA directory with random (non-zero) A and B, so it visibly changes the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model, _ = load_model(model_dir, resolve_placement("cpu", "float32"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out
