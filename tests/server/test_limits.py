"""Operator limits per tenant: RESOURCE_EXHAUSTED naming the setting, and the other tenant unaffected.

One server with small limits on its own Redis database; streams and calls of tenant ``a`` at their limits
must leave tenant ``b`` (and health checks) answering at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from policyopt.client import (
    Client,
    InvalidArgument,
    ResourceExhausted,
    RewardServer,
    RunHandle,
    Trajectory,
    Turn,
)
from policyopt.core.settings import Settings
from policyopt.server.app import PolicyOptServer, build_server
from policyopt.server.interceptors import server_interceptors
from policyopt.server.limits import LimitsInterceptor, ThreadPlan
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

PROMPT_ANSWER_S = 1.0  # what "answers promptly" means here, on 2 shared cores


@dataclass
class Limited:
    running: PolicyOptServer
    keys: dict[str, str]
    model: str
    endpoint: str


@pytest.fixture(scope="module")
def limited(server, valkey, tiny_model_dir: Path) -> Iterator[Limited]:
    url = valkey.url.rsplit("/", 1)[0] + "/3"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    settings = server.settings.replace(
        redis_url=url,
        max_active_runs_per_tenant=3,
        max_queued_prompts=4,
        max_queued_prompts_per_tenant=6,
        max_request_mb=1,
    )
    with (
        RewardServer(lambda prompt, completion, metadata: 1.0) as endpoint,
        build_server(settings, poll_ms=200) as running,  # the default pool: 64 threads, 32 for streams
    ):
        yield Limited(running, server.keys, str(tiny_model_dir), endpoint.address)


def _client(limited: Limited, tenant: str) -> Client:
    return Client(limited.running.address, api_key=limited.keys[tenant], timeout=30)


def _run(client: Client, limited: Limited) -> RunHandle:
    client.register_reward_endpoint("ones", limited.endpoint)
    return client.create_run(
        limited.model, reward_endpoint="ones", group_size=2, prompts_per_step=1, max_new_tokens=8
    )


def test_active_runs_per_tenant_are_limited_and_cancelling_frees_one(limited: Limited) -> None:
    with _client(limited, "a") as a, _client(limited, "b") as b:
        for run in a.list_runs():
            if run.status == "running":
                a.cancel(run.run_id)
        runs = [_run(a, limited) for _ in range(3)]
        with pytest.raises(ResourceExhausted, match="3 running runs.*POLICYOPT_MAX_ACTIVE_RUNS_PER_TENANT"):
            _run(a, limited)
        assert _run(b, limited).info.status == "running"  # the other tenant is unaffected
        runs[0].cancel()
        assert _run(a, limited).info.status == "running"


def test_queued_prompts_are_limited_per_run_and_per_tenant(limited: Limited) -> None:
    with _client(limited, "a") as a, _client(limited, "b") as b:
        for run in a.list_runs():
            if run.status == "running":
                a.cancel(run.run_id)
        first, second = _run(a, limited), _run(a, limited)
        with pytest.raises(ResourceExhausted, match="pass its limit of 4 .*POLICYOPT_MAX_QUEUED_PROMPTS\\)"):
            first.submit_prompts(["p"] * 5)
        first.submit_prompts(["p"] * 4)
        second.submit_prompts(["p"] * 2)
        with pytest.raises(
            ResourceExhausted, match="6 prompts waiting in all .*POLICYOPT_MAX_QUEUED_PROMPTS_PER_TENANT"
        ):
            second.submit_prompts(["p"])
        assert len(_run(b, limited).submit_prompts(["p"] * 4)) == 4  # the other tenant is unaffected
        first.cancel()  # a cancelled run's prompts no longer count against the tenant
        assert len(second.submit_prompts(["p"] * 2)) == 2


def test_a_request_over_max_request_mb_is_resource_exhausted(limited: Limited) -> None:
    with _client(limited, "a") as a:
        for run in a.list_runs():
            if run.status == "running":
                a.cancel(run.run_id)
        run = _run(a, limited)
        with pytest.raises(ResourceExhausted, match="larger than max.*POLICYOPT_MAX_REQUEST_MB"):
            run.submit_prompts(["x" * (2 << 20)])


def test_trajectory_groups_are_bounded_before_they_are_validated(limited: Limited) -> None:
    def group(size: int) -> list[Trajectory]:
        turn = Turn.model([5, 6, 7], [-1.0, -0.5, -0.2], 0)
        return [Trajectory(prompt_ids=[2, 10, 11], turns=[turn], reward=float(i % 2)) for i in range(size)]

    with _client(limited, "a") as a:
        for info in a.list_runs():
            if info.status == "running":
                a.cancel(info.run_id)
        run = a.create_run(limited.model, method="agentic_grpo", group_size=2, prompts_per_step=1)
        with pytest.raises(
            InvalidArgument, match=r"group 1 has 65 trajectories.*at most 64 .*MAX_GROUP_SIZE"
        ):
            run.submit_trajectories([group(2), group(65)])
        with pytest.raises(ResourceExhausted, match="0 groups waiting .* limit of 4 .*MAX_QUEUED_PROMPTS"):
            run.submit_trajectories([group(2)] * 5)
        assert len(run.submit_trajectories([group(2)] * 4)) == 4


def _watch(channel: grpc.Channel, key: str, run_id: str) -> grpc.Call:
    stub = pb_grpc.PolicyOptimizerStub(channel)
    return stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=(("x-api-key", key),))


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_streams_beyond_the_tenant_limit_are_refused_and_others_keep_answering(limited: Limited) -> None:
    with _client(limited, "a") as a, _client(limited, "b") as b:
        for client in (a, b):
            for info in client.list_runs():
                if info.status == "running":
                    client.cancel(info.run_id)
        run_a, run_b = _run(a, limited), _run(b, limited)
        channel = grpc.insecure_channel(limited.running.address)
        streams = [_watch(channel, limited.keys["a"], run_a.run_id) for _ in range(33)]
        opened, refused = [], []
        for stream in streams:
            try:
                next(stream)  # the run's "running" event
                opened.append(stream)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "POLICYOPT_MAX_STREAMS_PER_TENANT" in exc.details()
                refused.append(stream)
        assert (len(opened), len(refused)) == (8, 25)
        assert limited.running.limits is not None and limited.running.limits.streams.held("a") == 8

        # tenant b, meanwhile: unary calls, its own stream and health checks answer at once
        assert _timed(lambda: b.get_run(run_b.run_id)) < PROMPT_ANSWER_S
        assert _timed(b.list_runs) < PROMPT_ANSWER_S
        own = _watch(channel, limited.keys["b"], run_b.run_id)
        assert _timed(lambda: next(own)) < PROMPT_ANSWER_S
        health = health_pb2_grpc.HealthStub(channel)
        assert _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)) < PROMPT_ANSWER_S
        own.cancel()

        for stream in opened:
            stream.cancel()
        deadline = time.monotonic() + 5
        while limited.running.limits.streams.held() and time.monotonic() < deadline:  # b's stream too
            time.sleep(0.05)
        assert limited.running.limits.streams.held() == 0  # every slot came back
        again = _watch(channel, limited.keys["a"], run_a.run_id)
        assert next(again).run_id == run_a.run_id
        again.cancel()
        channel.close()


# -- the interceptor on a bare server: unary slots and the total of streams ----------------------------
class _Gate:
    """Handlers that wait on one event: ``Wait`` (unary) and ``Follow`` (a stream of one message)."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request != b"fast":
            self.open.wait(10)
        return b"done"

    def follow(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"started"
        self.open.wait(10)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "test.Gate",
            {
                "Wait": grpc.unary_unary_rpc_method_handler(self.wait),
                "Follow": grpc.unary_stream_rpc_method_handler(self.follow),
            },
        )


@pytest.fixture
def gated() -> Iterator[tuple[str, _Gate, LimitsInterceptor]]:
    settings = Settings(max_concurrent_rpcs_per_tenant=2, max_streams_per_tenant=8)
    plan = ThreadPlan(pool=12)  # 6 stream slots
    limits = LimitsInterceptor(settings, plan)
    gate = _Gate()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=plan.pool),
        interceptors=server_interceptors({"key-a": "a", "key-b": "b"}, False, limits),
        maximum_concurrent_rpcs=plan.pool,
    )
    server.add_generic_rpc_handlers((gate.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", gate, limits
    finally:
        gate.open.set()
        server.stop(1).wait()


def test_unary_calls_beyond_the_tenant_limit_are_refused_and_the_slots_come_back(gated) -> None:
    address, gate, limits = gated
    with grpc.insecure_channel(address) as channel:
        wait = channel.unary_unary("/test.Gate/Wait")
        slow = [wait.future(b"slow", metadata=(("x-api-key", "key-a"),)) for _ in range(2)]
        deadline = time.monotonic() + 5
        while limits.calls.held("a") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as refused:
            wait(b"slow", metadata=(("x-api-key", "key-a"),), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "POLICYOPT_MAX_CONCURRENT_RPCS_PER_TENANT" in refused.value.details()
        assert wait(b"fast", metadata=(("x-api-key", "key-b"),), timeout=PROMPT_ANSWER_S) == b"done"
        gate.open.set()
        assert [f.result(timeout=5) for f in slow] == [b"done", b"done"]
        assert limits.calls.held() == 0


def test_streams_stop_at_half_the_pool_so_unary_calls_keep_their_threads(gated) -> None:
    address, gate, limits = gated
    with grpc.insecure_channel(address) as channel:
        follow = channel.unary_stream("/test.Gate/Follow")
        held = [follow(b"", metadata=(("x-api-key", "key-a"),)) for _ in range(6)]
        assert [next(s) for s in held] == [b"started"] * 6
        with pytest.raises(grpc.RpcError) as refused:
            next(follow(b"", metadata=(("x-api-key", "key-b"),)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the server has 6 streams open" in refused.value.details()
        wait = channel.unary_unary("/test.Gate/Wait")
        assert wait(b"fast", metadata=(("x-api-key", "key-b"),), timeout=PROMPT_ANSWER_S) == b"done"
        for stream in held:
            stream.cancel()
        gate.open.set()
        deadline = time.monotonic() + 5
        while limits.streams.held() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limits.streams.held() == 0


# -- cheap checks first ---------------------------------------------------------------------------------
@pytest.fixture
def server_process(
    valkey, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """``policyopt serve`` in its own process (address, pid), so that its memory is measured alone."""
    env = dict(
        os.environ,
        REDIS_URL=valkey.url.rsplit("/", 1)[0] + "/4",
        POLICYOPT_API_KEYS="a:key-a",
        POLICYOPT_DATA_DIR=str(data_dir),
        POLICYOPT_MODEL_ROOTS=str(tmp_path_factory.getbasetemp()),
        POLICYOPT_ENDPOINT_ALLOWLIST="public,loopback",
        POLICYOPT_TELEMETRY="off",
        POLICYOPT_HTTP_PORT="-1",  # never the default 8080 in tests
    )
    process = subprocess.Popen(
        [sys.executable, "-c", "from policyopt.cli.main import main; main()", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"the server printed {line!r}"
        yield match.group(1), process.pid
    finally:
        process.terminate()
        process.wait(30)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_10_mib_prompt_is_refused_without_tokenizing_and_memory_comes_back(
    server_process: tuple[str, int], tiny_model_dir: Path, reward_endpoint: RewardServer
) -> None:
    """Tokenizing 10 MiB would take seconds (about 20 s with the tiny tokenizer); its byte length alone proves
    it too long.

    Measured: the server process's resident memory (``/proc/PID/statm``) after each of 20 requests.
    """
    address, pid = server_process
    huge = "x" * (10 << 20)
    timings, rss = [], []
    with Client(address, api_key="key-a", timeout=30) as client:
        client.register_reward_endpoint("ones", reward_endpoint.address)
        run = client.create_run(str(tiny_model_dir), reward_endpoint="ones", group_size=2, prompts_per_step=1)
        for _ in range(20):
            started = time.perf_counter()
            with pytest.raises(
                InvalidArgument, match=r"prompt 0 is at least \d+ tokens \(10485760 bytes\).*512"
            ):
                run.submit_prompts([huge])
            timings.append(time.perf_counter() - started)
            rss.append(_rss_mb(pid))
        assert run.refresh().prompts_submitted == 0
    assert max(timings) < 1.0, timings  # typically 0.05-0.1 s, most of it sending 10 MiB over loopback
    # a retained request would add 10 MiB each; glibc's arenas kept ~one per thread before the server fixed
    # its mmap threshold (``app.return_large_buffers_to_the_os``): +80 MiB over 30 requests
    # (20 retained requests would add 200 MiB; gRPC's own buffers move RSS by up to +30 MiB, measured)
    assert max(rss[-10:]) - max(rss[:5]) < 40, [round(x) for x in rss]
