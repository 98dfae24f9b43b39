"""What a tenant learns from a failing reward endpoint: one reason written by the service, the same for a
closed port, an HTTP server, a Redis and a gRPC server without RewardService (no port scanner), and a
connect-time re-check of the outbound policy."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import redis
from support.rollout import dead_address

from policyopt.core.settings import Settings
from policyopt.core.types import EventKind, MethodChoice, PromptTask, RewardEndpointInfo, RunConfig
from policyopt.core.valkey import EmbeddedValkey
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms import pin_method, resolve_method
from policyopt.workers.rollout.worker import RolloutWorker

TENANT = "scanner"


class _Secret(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"SECRET-HTTP-BODY")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Loopback listeners of four kinds, by name -> host:port."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Secret)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    bare_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # serves no RewardService
    grpc_port = bare_grpc.add_insecure_port("127.0.0.1:0")
    bare_grpc.start()
    with EmbeddedValkey(tmp_path / "other-valkey", appendonly=False) as other_redis:
        yield {
            "closed": dead_address(),
            "http": f"127.0.0.1:{web.server_address[1]}",
            "redis": other_redis.url.split("//", 1)[1].split("/", 1)[0],
            "grpc": f"127.0.0.1:{grpc_port}",
        }
    bare_grpc.stop(None)
    web.shutdown()
    web.server_close()


def _run_with_endpoint(store: RunStore, model_dir: Path, address: str) -> str:
    store.register_endpoint(TENANT, RewardEndpointInfo("x", address))
    method = MethodChoice("grpo")
    config = RunConfig(
        base_model=str(model_dir), reward_endpoint="x", group_size=2, max_new_tokens=4, method=method,
        resolved_method=pin_method(resolve_method(method)),
    )  # fmt: skip
    return store.create_run(TENANT, config).run_id


def _error_after_one_prompt(worker: RolloutWorker, store: RunStore, run_id: str) -> str:
    WorkQueue(store.r).enqueue_prompts([PromptTask(run_id=run_id, prompt_id="p0", prompt="2 + 2?")])
    while worker.process_one(block_ms=100):
        assert worker.wait_scored(timeout_s=60)
    (message,) = [e.message for e in store.read_events(run_id) if e.kind == EventKind.ERROR]
    return message


def test_a_closed_port_an_http_server_a_redis_and_a_grpc_server_give_the_same_event(
    fresh_redis_url: str,
    fresh_redis: redis.Redis,
    tiny_model_dir: Path,
    tmp_path: Path,
    listeners: dict[str, str],
    local_policy: dict[str, tuple[str, ...]],
) -> None:
    settings = Settings(
        redis_url=fresh_redis_url, data_dir=str(tmp_path), device="cpu", torch_threads=1,
        reward_retries=1, reward_timeout_s=2.0, reward_max_attempts=1, **local_policy,
    )  # fmt: skip
    worker = RolloutWorker(settings, redis_client=fresh_redis, consumer="scan")
    worker.rewards.backoff_s = 0.01
    store = RunStore(fresh_redis)
    seen = {}
    for kind, address in listeners.items():
        store.register_endpoint(TENANT, RewardEndpointInfo("x", address))  # re-pointed for each kind
        run_id = _run_with_endpoint(store, tiny_model_dir, address)
        seen[kind] = _error_after_one_prompt(worker, store, run_id).replace(address, "ADDRESS")
    worker.close()
    assert len(set(seen.values())) == 1, seen
    assert "could not score" in seen["closed"] and "SECRET" not in seen["http"]


def test_a_name_that_resolves_to_a_forbidden_address_at_connect_time_is_not_called(
    fresh_redis_url: str, fresh_redis: redis.Redis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The allowlist admits the name ``localhost`` (as registration saw it) but not 127.0.0.1."""
    hits: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    settings = Settings(
        redis_url=fresh_redis_url, data_dir=str(tmp_path), device="cpu", torch_threads=1,
        reward_retries=0, endpoint_allowlist=("localhost:*", "public"),
        model_roots=(str(tiny_model_dir.parent),),
    )  # fmt: skip
    worker = RolloutWorker(settings, redis_client=fresh_redis, consumer="rebind")
    store = RunStore(fresh_redis)
    run_id = _run_with_endpoint(store, tiny_model_dir, f"localhost:{sock.getsockname()[1]}")
    message = _error_after_one_prompt(worker, store, run_id)
    worker.close()
    with contextlib.suppress(TimeoutError):
        hits.append(sock.accept()[0].recv(10))
    sock.close()
    assert "POLICYOPT_ENDPOINT_ALLOWLIST" in message and hits == []
