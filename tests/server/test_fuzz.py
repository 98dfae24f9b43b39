"""Hostile requests to every RPC of PolicyOptimizer: never INTERNAL, UNKNOWN or UNAVAILABLE.

Hypothesis draws structurally valid messages with hostile contents (ids with key suffixes, versions in
other scripts, long path components, NaN/inf/huge/negative numbers, Structs with NaN or deep nesting,
UTF-8 edge cases, megabyte strings) and raw bytes that are not messages at all. Every status must say
what the request did wrong, in a message of bounded length. Afterwards the service still serves and a
run still trains a step.

The fuzzer runs its own server on database 2 of the session's Valkey, so what it queues never reaches
other tests' workers. Examples are derandomized (the same requests on every run) and nothing is written
to a Hypothesis database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.wire import nested_create_run

from policyopt.client import Client, RewardServer, Trajectory, Turn
from policyopt.core.settings import Settings
from policyopt.core.types import AdapterManifest
from policyopt.server.app import build_server
from policyopt.server.errors import MAX_MESSAGE_CHARS
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
EXAMPLES = 300  # per RPC with a request to vary (10 of 13), and 1,000 raw payloads: about 4,000 requests
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SERVICE = "/policyopt.v1.PolicyOptimizer/"
STREAMING = {"WatchRun", "PullAdapter", "WatchAdapters"}
CLIENT_STREAMING = {"UploadAdapter"}
RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["PolicyOptimizer"].methods]
sent: dict[str, int] = {}


@dataclasses.dataclass
class Target:
    address: str
    stub: pb_grpc.PolicyOptimizerStub
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    live_run: str  # running, with a reward endpoint: takes prompts
    agentic_run: str  # running, agentic_grpo: takes trajectories
    ended_run: str  # cancelled, with version 1 published: streams end
    tiny_model: str
    endpoint: str
    redis_url: str
    settings: Settings


@pytest.fixture(scope="module")
def target(
    server, valkey, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    url = valkey.url.rsplit("/", 1)[0] + "/2"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    fuzz_settings = server.settings.replace(redis_url=url)
    with (
        RewardServer(lambda prompt, completion, metadata: 1.0) as endpoint,
        build_server(fuzz_settings, max_workers=16, poll_ms=50) as running,
        Client(running.address, api_key=server.keys["a"], timeout=60) as client,
        grpc.insecure_channel(running.address) as channel,
    ):
        client.register_reward_endpoint("fuzz", endpoint.address)
        model = str(tiny_model_dir)
        common: dict[str, Any] = {"group_size": 2, "prompts_per_step": 1, "max_new_tokens": 8}
        live = client.create_run(model, method="grpo", reward_endpoint="fuzz", **common)
        agentic = client.create_run(model, method="agentic_grpo", **common)
        ended = client.create_run(model, method="grpo", reward_endpoint="fuzz", **common)
        with redis.Redis.from_url(url) as r:
            _publish(fuzz_settings.adapter_root, r, ended.run_id, model, tmp_path_factory.mktemp("fuzz-v1"))
        ended.cancel()
        yield Target(
            address=running.address,
            stub=pb_grpc.PolicyOptimizerStub(channel),
            channel=channel,
            metadata=(("x-api-key", server.keys["a"]),),
            live_run=live.run_id,
            agentic_run=agentic.run_id,
            ended_run=ended.run_id,
            tiny_model=model,
            endpoint=endpoint.address,
            redis_url=url,
            settings=fuzz_settings,
        )


def _publish(adapter_root: Path, r: redis.Redis, run_id: str, model: str, work: Path) -> None:
    (work / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (work / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    manifest = AdapterManifest(run_id=run_id, version=1, step=1, base_model=model, method="grpo")
    RunStore(r).commit_step(
        WorkQueue(r), LocalAdapterStore(adapter_root).publish(run_id, 1, work, manifest), []
    )


# -- strategies --------------------------------------------------------------------------------------------
EDGE_TEXT = [
    "", " ", "\x00", "a\x00b", "\n", "\u202e", "e\u0301", "\ufeff", "\uffff", "\U0010ffff", "𝟘", "²", "٣",
    "..", "../../x", "/", "/etc/passwd", "~", "*", "?", "[", "\\", "%s", "{}", "latest", "0", "-1",
    "9" * 25, "1e3", "nan", "inf", "run-", "run-0123456789ab", "run-0123456789AB", "a" * 300,
]  # fmt: skip
SUFFIXES = [":adapters", ":events", ":groups", ":trainer", "\x00", "/../x", "\n", " "]


def long_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: c * n,
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from([255, 256, 4097, 70_000, 1 << 20]),
    )


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40), long_text())


def run_ids(t: Target) -> st.SearchStrategy[str]:
    known = st.sampled_from([t.live_run, t.agentic_run, t.ended_run])
    return st.one_of(
        known,
        st.builds(lambda r, s: r + s, known, st.sampled_from(SUFFIXES)),
        st.builds(lambda h: f"run-{h:012x}", st.integers(0, (1 << 48) - 1)),
        hostile_text(),
    )


def ended_or_hostile_run_ids(t: Target) -> st.SearchStrategy[str]:
    """Streams follow a running run until the caller leaves: point them at the ended run only."""
    return st.one_of(
        st.just(t.ended_run),
        st.builds(lambda s: t.ended_run + s, st.sampled_from(SUFFIXES)),
        hostile_text(),
    )


floats = st.floats(allow_nan=True, allow_infinity=True)
int32 = st.one_of(
    st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from([0, -1, 1, 2, (1 << 31) - 1, -(1 << 31)])
)
int64 = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from([0, -1, 1, (1 << 63) - 1, -(1 << 63)])
)
json_values = st.recursive(
    st.none() | st.booleans() | floats | st.text(max_size=20) | long_text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | long_text(), inner, max_size=4)
    ),
    max_leaves=20,
)


def _deep_struct(depth: int) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    cursor = struct
    for _ in range(depth):
        cursor = cursor.fields["k"].struct_value
    return struct


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


method_keys = st.sampled_from(["estimator", "estimator.coef", "loss", "kl", "kl.coef", "clip.low", "x" * 200])


def _fits(struct: struct_pb2.Struct) -> bool:
    """Whether protobuf builds a request holding ``struct`` two levels down (it parses 100 levels)."""
    try:
        pb.CreateRunRequest(method=pb.MethodSpec(reward_side=struct))
    except DecodeError:
        return False
    return True


structs = st.one_of(
    st.dictionaries(st.text(max_size=10) | method_keys | long_text(), json_values, max_size=4).map(_struct),
    st.integers(10, 30).map(_deep_struct),  # 3 levels each; deeper ones go as raw bytes
).filter(_fits)
method_specs = st.builds(
    pb.MethodSpec,
    preset=st.one_of(
        st.sampled_from(["grpo", "dapo", "drgrpo", "rloo", "agentic_grpo", "opd"]), hostile_text()
    ),
    reward_side=structs,
    trajectory_side=structs,
)


def model_names(t: Target) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(t.tiny_model),
        st.builds(lambda s: t.tiny_model + "/" + s, hostile_text()),
        hostile_text().filter(lambda s: s not in ("tiny", "smollm2")),  # never build or download here
    )


def addresses(t: Target) -> st.SearchStrategy[str]:
    """Literal addresses only: a host name that matches would be looked up in DNS."""
    return st.one_of(
        st.just(t.endpoint),
        st.builds(lambda p: f"127.0.0.1:{p}", st.integers(0, 1 << 20)),
        st.builds(lambda p: f"[::1]:{p}", st.integers(0, 99999)),
        st.builds(lambda s: f"127.0.0.1:{s}", hostile_text()),
        hostile_text().map(lambda s: " " + s),
    )


def prompts(t: Target) -> st.SearchStrategy[pb.Prompt]:
    return st.builds(pb.Prompt, text=st.one_of(st.just("What is 1 + 1?"), hostile_text()), metadata=structs)


def turns() -> st.SearchStrategy[pb.Turn]:
    return st.builds(
        pb.Turn,
        role=st.sampled_from([0, 1, 2, 3, -1, 1 << 20]),
        token_ids=st.lists(st.one_of(st.integers(0, 300), int64), max_size=6),
        logprobs=st.lists(floats, max_size=6),
        adapter_version=int64,
        reward=st.one_of(st.none(), floats),
    )


def trajectories() -> st.SearchStrategy[pb.Trajectory]:
    return st.builds(
        pb.Trajectory,
        prompt_ids=st.lists(st.one_of(st.integers(0, 300), int64), max_size=6),
        turns=st.lists(turns(), max_size=3),
        reward=floats,
    )


def requests_for(name: str, t: Target) -> st.SearchStrategy[Any]:
    """A strategy of hostile requests for RPC ``name``."""
    strategies: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "RegisterRewardEndpoint": lambda: st.builds(
            pb.RegisterRewardEndpointRequest,
            name=st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,70}\Z"), hostile_text()),
            address=addresses(t),
            timeout_s=floats,
        ),
        "ListRewardEndpoints": lambda: st.just(pb.ListRewardEndpointsRequest()),
        "CreateRun": lambda: st.builds(
            pb.CreateRunRequest,
            base_model=model_names(t),
            method=method_specs,
            reward_endpoint=st.one_of(st.just(""), st.just("fuzz"), hostile_text()),
            group_size=int32,
            prompts_per_step=int32,
            max_new_tokens=int32,
            temperature=floats,
            top_p=floats,
            learning_rate=floats,
            max_steps=int32,
            max_staleness=int32,
            engine=st.one_of(st.sampled_from(["", "transformers", "vllm"]), hostile_text()),
            seed=int64,
            lora=st.builds(
                pb.LoraSpec,
                rank=int32,
                alpha=int32,
                dropout=floats,
                target_modules=st.lists(hostile_text(), max_size=3),
            ),
            teacher=st.builds(
                pb.TeacherSpec,
                model=st.one_of(st.just(""), model_names(t)),
                endpoint=st.one_of(
                    st.just(""),
                    st.sampled_from(["http://127.0.0.1:1", "ftp://x", "http://[::1"]),
                    hostile_text(),
                ),
                coef=floats,
            ),
            eval=st.builds(
                pb.EvalSpec,
                prompts=st.lists(prompts(t), max_size=3),
                every=int32,
                samples=int32,
                reward_endpoint=st.one_of(st.just(""), st.just("fuzz"), hostile_text()),
                temperature=floats,
                success_threshold=floats,
            ),
            promotion=st.builds(
                pb.PromotionSpec,
                rule=st.one_of(st.sampled_from(["", "none", "beats_best", "threshold"]), hostile_text()),
                margin=floats,
                threshold=floats,
                stop_at_metric=floats,
                patience=int32,
            ),
            init_adapter=st.one_of(
                st.just(""), st.just(f"{t.ended_run}@v1"), st.just("upload:" + "0" * 64), hostile_text()
            ),
            retention=st.builds(pb.RetentionSpec, keep_versions=int32, keep_trainer_states=int32),
        ),
        "GetRun": lambda: st.builds(pb.GetRunRequest, run_id=run_ids(t)),
        "ListRuns": lambda: st.just(pb.ListRunsRequest()),
        "CancelRun": lambda: st.builds(  # never the runs the fuzzer needs running
            pb.CancelRunRequest, run_id=run_ids(t).filter(lambda r: r not in (t.live_run, t.agentic_run))
        ),
        "WatchRun": lambda: st.builds(
            pb.WatchRunRequest,
            run_id=ended_or_hostile_run_ids(t),
            after_event_id=st.one_of(
                st.sampled_from(
                    [
                        "",
                        "0",
                        "0-0",
                        "1-1",
                        "18446744073709551615-18446744073709551615",
                        "18446744073709551616-0",
                    ]
                ),
                st.builds(lambda a, b: f"{a}-{b}", int64, int64),
                hostile_text(),
            ),
        ),
        "SubmitPrompts": lambda: st.builds(
            pb.SubmitPromptsRequest, run_id=run_ids(t), prompts=st.lists(prompts(t), max_size=3)
        ),
        "FinishEpisode": lambda: st.builds(
            pb.FinishEpisodeRequest,
            run_id=st.one_of(st.just(t.agentic_run), run_ids(t)),
            session_id=st.one_of(st.sampled_from(["s-1", ""]), hostile_text()),
            reward=floats,
            task_key=st.one_of(st.just("task"), hostile_text(), long_text()),
            components=st.dictionaries(st.one_of(st.just("correct"), hostile_text()), floats, max_size=20),
        ),
        "SubmitTrajectories": lambda: st.builds(
            pb.SubmitTrajectoriesRequest,
            run_id=st.one_of(st.just(t.agentic_run), run_ids(t)),
            groups=st.lists(
                st.builds(
                    pb.TrajectoryGroupInput,
                    trajectories=st.lists(trajectories(), max_size=3),
                    metadata=structs,
                ),
                max_size=2,
            ),
        ),
        "ListAdapters": lambda: st.builds(pb.ListAdaptersRequest, run_id=run_ids(t)),
        "PullAdapter": lambda: st.builds(
            pb.PullAdapterRequest,
            run_id=ended_or_hostile_run_ids(t),
            version=st.one_of(
                st.sampled_from(["", "latest", "1", "2", "01"]), st.integers().map(str), hostile_text()
            ),
        ),
        "WatchAdapters": lambda: st.builds(
            pb.WatchAdaptersRequest, run_id=ended_or_hostile_run_ids(t), after_version=int64
        ),
        "ListMethods": lambda: st.just(pb.ListMethodsRequest()),
        "AddEvalPrompts": lambda: st.builds(
            pb.AddEvalPromptsRequest, run_id=run_ids(t), prompts=st.lists(prompts(t), max_size=3)
        ),
        "UploadAdapter": lambda: st.builds(
            pb.UploadAdapterChunk,
            base_model=st.one_of(st.just(t.tiny_model), model_names(t)),
            file_name=st.one_of(
                st.sampled_from(["adapter_config.json", "adapter_model.safetensors"]), hostile_text()
            ),
            data=st.binary(max_size=64),
            last=st.booleans(),
            sha256=st.one_of(st.just(""), hostile_text()),
        ),
    }
    return strategies[name]()


# -- checks ------------------------------------------------------------------------------------------------
def check_status(name: str, call: Callable[[], object]) -> None:
    sent[name] = sent.get(name, 0) + 1
    try:
        reply = call()
        if hasattr(reply, "__next__"):
            for _ in reply:  # type: ignore[attr-defined]
                pass
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        assert code not in FORBIDDEN, f"{name}: {code} {details[:500]}"
        assert len(details) <= MAX_MESSAGE_CHARS + 100, f"{name}: a {len(details)}-character message"


@pytest.mark.parametrize("rpc", RPCS)
def test_hostile_messages_get_precise_statuses(target: Target, rpc: str) -> None:
    method = getattr(target.stub, rpc)

    @FUZZ
    @given(request=requests_for(rpc, target))
    def send(request: Any) -> None:
        sent = iter([request, request]) if rpc in CLIENT_STREAMING else request  # a file sent twice, too
        check_status(rpc, lambda: method(sent, metadata=target.metadata, timeout=20))

    send()


@settings(FUZZ, max_examples=1000)
@given(data=st.data())
def _raw_bytes(target: Target, data: st.DataObject) -> None:
    rpc = data.draw(st.sampled_from(RPCS))
    valid = data.draw(requests_for(rpc, target)).SerializeToString() if data.draw(st.booleans()) else b""
    payload = data.draw(
        st.one_of(
            st.binary(max_size=64),
            st.just(b"\x0a\x02\xff\xfe"),  # field 1, invalid UTF-8
            st.builds(
                lambda i, b: valid[:i] + bytes([b]) + valid[i + 1 :],
                st.integers(0, max(len(valid), 1)),
                st.integers(0, 255),
            ),
            st.builds(lambda i: valid[:i], st.integers(0, max(len(valid), 1))),
        )
    )
    if rpc == "CreateRun" and data.draw(st.booleans()):
        payload = nested_create_run(data.draw(st.integers(90, 300)))
    kind = target.channel.unary_stream if rpc in STREAMING else target.channel.unary_unary
    call = kind(SERVICE + rpc, request_serializer=None, response_deserializer=None)
    check_status(f"raw {rpc}", lambda: call(payload, metadata=target.metadata, timeout=20))


def test_raw_bytes_that_are_no_message_get_invalid_argument_not_internal(target: Target) -> None:
    _raw_bytes(target)


def test_after_the_fuzz_the_service_serves_and_a_run_trains_a_step(target: Target) -> None:
    assert sum(sent.values()) >= len(RPCS) * 100 or not sent, sent  # the fuzz above ran (when selected)
    from policyopt.workers.train.worker import TrainerWorker

    with Client(target.address, api_key=target.metadata[0][1], timeout=60) as client:
        assert client.get_run(target.live_run).info.status.value == "running"
        assert {target.live_run, target.agentic_run} <= {r.run_id for r in client.list_runs()}
        assert len(client.submit_prompts(target.live_run, ["What is 2 + 2?"])) == 1
        group_ids = client.submit_trajectories(target.agentic_run, [_group(), _group()])
        assert len(group_ids) == 2
        before = client.get_run(target.agentic_run).info.version
        settings_cpu = dataclasses.replace(target.settings, device="cpu", torch_threads=1)
        with redis.Redis.from_url(target.redis_url) as r:
            worker = TrainerWorker(settings_cpu, redis_client=r, block_ms=100)
            try:
                assert any(worker.train_once(target.agentic_run) for _ in range(20))
            finally:
                worker.close()
        assert client.get_run(target.agentic_run).info.version == before + 1


def _group() -> list[Trajectory]:
    return [
        Trajectory(prompt_ids=[2, 10, 11], turns=[Turn.model([5, 6, 7], [-1.0, -0.5, -0.2], 0)], reward=r)
        for r in (1.0, 0.0)
    ]


def teardown_module() -> None:
    if sent:
        print(
            f"\nfuzz: {sum(sent.values())} requests: "
            + ", ".join(f"{k}={v}" for k, v in sorted(sent.items()))
        )
