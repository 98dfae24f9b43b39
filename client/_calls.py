"""One typed call per RPC, shared by ``Client`` and ``AsyncClient``.

A call is the request it sends, the stub method that sends it and the conversion of the response to
SDK dataclasses. ``Client`` runs a call blocking and ``AsyncClient`` awaits it; neither builds a request
or reads a response itself. A call's first type parameter is the transport (``Blocking`` or
``Asyncio``), fixed by the client that runs it. The docstring of each call function is the docstring of
the public methods that make it (``docs_from`` copies it), so it is written once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from policyopt.client import _convert, _evaluation
from policyopt.client._stub import ClientStreamRpc, Metadata, StreamRpc, Stub, T, UnaryRpc
from policyopt.client.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from policyopt.client.tls import PemSource, read_pem, tls_credentials
from policyopt.client.types import (
    AdapterVersion,
    CreateRunOptions,
    EndpointTLS,
    EpisodeFinished,
    JSONValue,
    MethodCatalog,
    RewardEndpoint,
    RunEvent,
    RunInfo,
    UploadedAdapter,
)
from policyopt.v1 import policyopt_pb2 as pb

Request = TypeVar("Request")
Response = TypeVar("Response")
Out = TypeVar("Out")
Method = TypeVar("Method", bound=Callable[..., object])
ClientT = TypeVar("ClientT")


@dataclass(frozen=True)
class Unary(Generic[T, Request, Response, Out]):
    """A unary RPC: send ``request`` with ``method`` of the stub, return ``convert(response)``."""

    request: Request
    method: Callable[[Stub[T]], UnaryRpc[T, Request, Response]]
    convert: Callable[[Response], Out]


@dataclass(frozen=True)
class Stream(Generic[T, Request, Response, Out]):
    """A server-streaming RPC: each response, converted; ``timeout`` bounds the whole stream."""

    request: Request
    method: Callable[[Stub[T]], StreamRpc[T, Request, Response]]
    convert: Callable[[Response], Out]
    timeout: float | None = None


@dataclass(frozen=True)
class Upload(Generic[T, Request, Response, Out]):
    """A client-streaming RPC: send every message of ``requests``, return ``convert(response)``."""

    requests: list[Request]
    method: Callable[[Stub[T]], ClientStreamRpc[T, Request, Response]]
    convert: Callable[[Response], Out]


def docs_from(source: object) -> Callable[[Method], Method]:
    """Give the decorated method the docstring of ``source`` (a call function, or a method)."""

    def document(method: Method) -> Method:
        method.__doc__ = source.__doc__
        return method

    return document


DEFAULT_ADDRESS = "127.0.0.1:50051"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 << 20)]


def auth_metadata(api_key: str | None) -> Metadata:
    """The call metadata that carries ``api_key`` (default: ``POLICYOPT_API_KEY``); empty without a key."""
    key = api_key if api_key is not None else os.environ.get("POLICYOPT_API_KEY", "")
    return (("x-api-key", key),) if key else ()


def unreachable_hint(address: str, tls: bool) -> str:
    """What to check when the channel to ``address`` fails: the server, and whether both sides use TLS."""
    if tls:
        return (
            f"is the server at {address} running and serving TLS with a certificate that tls_ca signed "
            "(with mutual TLS, also give tls_cert= and tls_key=; CLI --tls-ca, --tls-cert, --tls-key)?"
        )
    return (
        f"is the server at {address} running? This client speaks plaintext: if the server serves TLS, "
        "connect with tls_ca= (CLI --tls-ca)"
    )


class ClientBase(Generic[T]):
    """What ``Client`` and ``AsyncClient`` share: the address, the unary deadline, the API key and the stub.

    ``api_key`` defaults to ``POLICYOPT_API_KEY``; ``timeout`` is the deadline of each unary call.
    TLS: ``tls_ca`` is the CA that signed the server's certificate, ``tls_cert`` and ``tls_key`` a client
    certificate for mutual TLS (paths, or PEM text); ``credentials`` (``tls_credentials(...)`` or any
    ``grpc.ChannelCredentials``) instead, e.g. ``tls_credentials()`` for a server with a public certificate.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
    ) -> None:
        if any(source is not None for source in (tls_ca, tls_cert, tls_key)):
            if credentials is not None:
                raise InvalidArgument("give credentials= or tls_ca=/tls_cert=/tls_key=, not both")
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        self.address = address
        self.timeout = timeout
        self.tls = credentials is not None
        self._auth = auth_metadata(api_key)
        self._unreachable_hint = unreachable_hint(address, self.tls)
        self._stub: Stub[T] = self._connect(address, credentials)

    def _connect(self, address: str, credentials: grpc.ChannelCredentials | None) -> Stub[T]:
        """Open the channel (the subclass keeps it, to close it) and return the stub on it."""
        raise NotImplementedError


class RunHandleBase(Generic[ClientT]):
    """What ``RunHandle`` and ``AsyncRunHandle`` share: the client, the run id and the last snapshot."""

    def __init__(self, client: ClientT, info: RunInfo) -> None:
        self.client = client
        self.info = info
        self.run_id = info.run_id

    def __repr__(self) -> str:
        status, version = self.info.status.value, self.info.version
        return f"{type(self).__name__}({self.run_id!r}, status={status}, version={version})"


# -- reward endpoints ----------------------------------------------------------------------------
def register_reward_endpoint(
    name: str, address: str, timeout_s: float = 0.0, tls_options: EndpointTLS | None = None
) -> Unary[T, pb.RegisterRewardEndpointRequest, pb.RewardEndpoint, RewardEndpoint]:
    """Register (or replace) a RewardService reachable by the workers at ``address``.

    ``timeout_s`` bounds each Score call (0: the server's default). ``tls=True`` makes the workers call it
    over TLS, verifying its certificate against ``tls_ca`` (a path or PEM text, sent as PEM; default: the
    workers' system roots); giving ``tls_ca`` implies ``tls``.
    """
    options = tls_options or {}
    tls_ca = options.get("tls_ca")
    ca = read_pem(tls_ca, "CA certificate").decode() if tls_ca is not None else ""
    request = pb.RegisterRewardEndpointRequest(
        name=name, address=address, timeout_s=timeout_s, tls=options.get("tls", False) or bool(ca), tls_ca=ca
    )
    return Unary(request, lambda stub: stub.RegisterRewardEndpoint, _convert.endpoint_from_proto)


def list_reward_endpoints() -> Unary[
    T, pb.ListRewardEndpointsRequest, pb.ListRewardEndpointsResponse, list[RewardEndpoint]
]:
    """The registered reward endpoints."""
    return Unary(
        pb.ListRewardEndpointsRequest(),
        lambda stub: stub.ListRewardEndpoints,
        lambda response: [_convert.endpoint_from_proto(e) for e in response.endpoints],
    )


# -- runs ----------------------------------------------------------------------------------------
def create_run(base_model: str, options: CreateRunOptions) -> Unary[T, pb.CreateRunRequest, pb.Run, RunInfo]:
    """Start a run on ``base_model`` with the ``method`` preset (default grpo); ``reward_side`` and
    ``trajectory_side`` override fields of either axis.

    Other options are ``RunOptions`` fields; those left out take the server's defaults (see
    ``CreateRunOptions``). The run's ``info.resolved_method`` is the method it trains with, every field of
    both axes pinned.
    """
    request = _convert.create_run_request(base_model, options)
    return Unary(request, lambda stub: stub.CreateRun, _convert.run_from_proto)


def get_run(run_id: str) -> Unary[T, pb.GetRunRequest, pb.Run, RunInfo]:
    """A handle on the run ``run_id`` holding its current snapshot; NotFound if there is none."""
    return Unary(pb.GetRunRequest(run_id=run_id), lambda stub: stub.GetRun, _convert.run_from_proto)


def list_runs() -> Unary[T, pb.ListRunsRequest, pb.ListRunsResponse, list[RunInfo]]:
    """A snapshot of every run."""
    return Unary(
        pb.ListRunsRequest(),
        lambda stub: stub.ListRuns,
        lambda response: [_convert.run_from_proto(r) for r in response.runs],
    )


def cancel(run_id: str) -> Unary[T, pb.CancelRunRequest, pb.Run, RunInfo]:
    """Cancel the run; returns its snapshot after the cancellation."""
    return Unary(pb.CancelRunRequest(run_id=run_id), lambda stub: stub.CancelRun, _convert.run_from_proto)


def watch_run(run_id: str, after_event_id: str = "") -> Stream[T, pb.WatchRunRequest, pb.RunEvent, RunEvent]:
    """Events of the run as they happen; ends when the run has ended. Break out to stop."""
    request = pb.WatchRunRequest(run_id=run_id, after_event_id=after_event_id)
    return Stream(request, lambda stub: stub.WatchRun, _convert.event_from_proto)


def submit_prompts(
    run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
) -> Unary[T, pb.SubmitPromptsRequest, pb.SubmitPromptsResponse, list[str]]:
    """Queue prompts (with optional per-prompt metadata for the reward function); returns prompt ids."""
    return Unary(
        _convert.submit_prompts_request(run_id, prompts, metadata),
        lambda stub: stub.SubmitPrompts,
        lambda response: list(response.prompt_ids),
    )


def submit_trajectories(
    run_id: str, groups: Sequence[_convert.GroupLike]
) -> Unary[T, pb.SubmitTrajectoriesRequest, pb.SubmitTrajectoriesResponse, list[str]]:
    """Queue groups of client-built (agentic) trajectories for training; returns group ids.

    Each group is a ``TrajectoryGroup`` or a list of 2+ ``Trajectory`` for the same task. Token ids go
    through untouched; see ``policyopt.client.agentic`` to build them from vLLM responses.
    """
    return Unary(
        _convert.submit_trajectories_request(run_id, groups),
        lambda stub: stub.SubmitTrajectories,
        lambda response: list(response.group_ids),
    )


def finish_episode(
    run_id: str,
    session_id: str,
    reward: float,
    task_key: str = "",
    components: Mapping[str, float] | None = None,
) -> Unary[T, pb.FinishEpisodeRequest, pb.FinishEpisodeResponse, EpisodeFinished]:
    """End an agent session recorded by ``policyopt proxy``: its calls become a trajectory with ``reward``.

    Episodes with the same ``task_key`` form one group once the run's ``group_size`` have finished.
    ``components`` are the episode's named sub-rewards (shown as ``reward/component/<name>``).
    """
    return Unary(
        pb.FinishEpisodeRequest(
            run_id=run_id,
            session_id=session_id,
            reward=reward,
            task_key=task_key,
            components=components or {},
        ),
        lambda stub: stub.FinishEpisode,
        lambda r: EpisodeFinished(r.trajectories, r.model_tokens, r.pending_in_group, r.group_id),
    )


# -- adapters ------------------------------------------------------------------------------------
def list_adapters(
    run_id: str, promoted_only: bool = False
) -> Unary[T, pb.ListAdaptersRequest, pb.ListAdaptersResponse, list[AdapterVersion]]:
    """The run's published adapter versions (``promoted_only``: the promoted ones)."""
    return Unary(
        pb.ListAdaptersRequest(run_id=run_id, promoted_only=promoted_only),
        lambda stub: stub.ListAdapters,
        lambda response: [_convert.version_from_proto(v) for v in response.versions],
    )


def watch_adapters(
    run_id: str, after_version: int = 0, timeout: float | None = None, promoted_only: bool = False
) -> Stream[T, pb.WatchAdaptersRequest, pb.AdapterVersion, AdapterVersion]:
    """Versions above ``after_version`` as they are published; ends when the run has ended.

    ``promoted_only``: each version once the run's promotion rule promotes it (after its evaluation)."""
    request = pb.WatchAdaptersRequest(run_id=run_id, after_version=after_version, promoted_only=promoted_only)
    return Stream(request, lambda stub: stub.WatchAdapters, _convert.version_from_proto, timeout)


def _chunk(chunk: pb.AdapterChunk) -> pb.AdapterChunk:
    return chunk


def pull_adapter(
    run_id: str, version: int | str
) -> Stream[T, pb.PullAdapterRequest, pb.AdapterChunk, pb.AdapterChunk]:
    """Download a version ("latest" or a number) into ``dest_dir/RUN/vNNNNNN``, sha256-verified."""
    request = pb.PullAdapterRequest(run_id=run_id, version=_convert.version_text(version))
    return Stream(request, lambda stub: stub.PullAdapter, _chunk)


@dataclass(frozen=True)
class VersionWait:
    """``wait_for_version``: the watch it reads, and the errors when the version does not come."""

    run_id: str
    version: int
    timeout: float | None

    def watch(self) -> Stream[T, pb.WatchAdaptersRequest, pb.AdapterVersion, AdapterVersion]:
        return watch_adapters(self.run_id, after_version=self.version - 1, timeout=self.timeout)

    def reached(self, published: AdapterVersion) -> bool:
        return published.version >= self.version

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        """Say which version did not come in time when the watch runs out of time."""
        try:
            yield
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(
                f"run {self.run_id} did not publish version {self.version} within {self.timeout}s"
            ) from exc

    def run_info(self) -> Unary[T, pb.GetRunRequest, pb.Run, RunInfo]:
        return get_run(self.run_id)

    def ended(self, run: RunInfo) -> FailedPrecondition:
        """The error when the watch ended (the run ended) before the version came."""
        return FailedPrecondition(
            f"run {self.run_id} ended ({run.status.value}) at version {run.version} before version {self.version}"
        )


def wait_for_version(run_id: str, version: int, timeout: float | None = None) -> VersionWait:
    """Wait until ``version`` is published and return it.

    DeadlineExceeded after ``timeout`` seconds; FailedPrecondition if the run ends first.
    """
    return VersionWait(run_id, version, timeout)


# -- evaluation and warm starts ----------------------------------------------------------------------
def add_eval_prompts(
    run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
) -> Unary[T, pb.AddEvalPromptsRequest, pb.AddEvalPromptsResponse, int]:
    """Add held-out prompts (with optional metadata for the reward function) to the run's evaluation set;
    returns how many the run now holds. Later evaluations score them too."""
    request = pb.AddEvalPromptsRequest(
        run_id=run_id, prompts=_evaluation.eval_prompts_to_proto(prompts, metadata)
    )
    return Unary(request, lambda stub: stub.AddEvalPrompts, lambda response: response.eval_prompt_count)


def upload_adapter(
    directory: str | os.PathLike[str], base_model: str
) -> Upload[T, pb.UploadAdapterChunk, pb.UploadedAdapter, UploadedAdapter]:
    """Upload a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) trained on
    ``base_model``; start a run from it with ``create_run(..., init_adapter=uploaded.init_adapter)``."""
    chunks = _evaluation.upload_chunks(directory, base_model)
    return Upload(chunks, lambda stub: stub.UploadAdapter, _evaluation.uploaded_from_proto)


# -- methods -------------------------------------------------------------------------------------
def list_methods() -> Unary[T, pb.ListMethodsRequest, pb.ListMethodsResponse, MethodCatalog]:
    """The method catalog: each reward-side and trajectory-side choice with its parameters, and the presets."""
    return Unary(pb.ListMethodsRequest(), lambda stub: stub.ListMethods, _convert.methods_from_proto)
