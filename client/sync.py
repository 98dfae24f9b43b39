"""``Client`` and ``RunHandle``: the blocking SDK over one gRPC channel."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar, Unpack

import grpc

from policyopt.client import _convert
from policyopt.client._adapters import AdapterWriter
from policyopt.client._telemetry import traced_channel
from policyopt.client.errors import DeadlineExceeded, FailedPrecondition, error_from_rpc, translating
from policyopt.client.types import (
    AdapterVersion,
    JSONValue,
    MethodCatalog,
    RewardEndpoint,
    RunEvent,
    RunInfo,
    RunOptions,
    RunStatus,
)
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:50051"


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    key = api_key if api_key is not None else os.environ.get("POLICYOPT_API_KEY", "")
    return (("x-api-key", key),) if key else ()


def _stream(call: grpc.Call, items: Iterator[T]) -> Iterator[T]:
    """Items of a server stream; leaving the loop early cancels the call."""
    try:
        yield from items
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise error_from_rpc(exc) from exc
    finally:
        call.cancel()


class Client:
    """Blocking client of the PolicyOptimizer service.

    ``api_key`` defaults to ``POLICYOPT_API_KEY``; ``timeout`` is the deadline of each unary call.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = auth_metadata(api_key)
        options = [("grpc.max_receive_message_length", 8 << 20)]
        raw = (
            grpc.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(address, options=options)
        )
        self._raw_channel = raw
        self._stub = pb_grpc.PolicyOptimizerStub(traced_channel(raw))

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _unary(self, method: str, request: object) -> object:
        with translating():
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self.timeout)

    def _stream(self, method: str, request: object, timeout: float | None = None) -> Iterator[object]:
        with translating():
            call = getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout)
        return _stream(call, call)

    # -- reward endpoints ------------------------------------------------------------------------
    def register_reward_endpoint(self, name: str, address: str, timeout_s: float = 0.0) -> RewardEndpoint:
        """Register (or replace) a RewardService reachable by the workers at ``address``."""
        request = pb.RegisterRewardEndpointRequest(name=name, address=address, timeout_s=timeout_s)
        return _convert.endpoint_from_proto(self._unary("RegisterRewardEndpoint", request))  # type: ignore[arg-type]

    def list_reward_endpoints(self) -> list[RewardEndpoint]:
        response: pb.ListRewardEndpointsResponse = self._unary(
            "ListRewardEndpoints", pb.ListRewardEndpointsRequest()
        )  # type: ignore[assignment]
        return [_convert.endpoint_from_proto(e) for e in response.endpoints]

    # -- runs ------------------------------------------------------------------------------------
    def create_run(
        self,
        base_model: str,
        *,
        method: str = "grpo",
        reward_endpoint: str = "",
        reward_side: Mapping[str, JSONValue] | None = None,
        trajectory_side: Mapping[str, JSONValue] | None = None,
        **options: Unpack[RunOptions],
    ) -> RunHandle:
        """Start a run; ``reward_side``/``trajectory_side`` override fields of the ``method`` preset."""
        request = _convert.create_run_request(
            base_model, method, reward_endpoint, reward_side, trajectory_side, options
        )
        return RunHandle(self, _convert.run_from_proto(self._unary("CreateRun", request)))  # type: ignore[arg-type]

    def get_run(self, run_id: str) -> RunHandle:
        return RunHandle(self, self._run_info(run_id))

    def _run_info(self, run_id: str) -> RunInfo:
        return _convert.run_from_proto(self._unary("GetRun", pb.GetRunRequest(run_id=run_id)))  # type: ignore[arg-type]

    def list_runs(self) -> list[RunInfo]:
        response: pb.ListRunsResponse = self._unary("ListRuns", pb.ListRunsRequest())  # type: ignore[assignment]
        return [_convert.run_from_proto(r) for r in response.runs]

    def cancel(self, run_id: str) -> RunInfo:
        return _convert.run_from_proto(self._unary("CancelRun", pb.CancelRunRequest(run_id=run_id)))  # type: ignore[arg-type]

    def watch_run(self, run_id: str, after_event_id: str = "") -> Iterator[RunEvent]:
        """Events of the run as they happen; ends when the run has ended. Break out to stop."""
        request = pb.WatchRunRequest(run_id=run_id, after_event_id=after_event_id)
        for event in self._stream("WatchRun", request):
            yield _convert.event_from_proto(event)  # type: ignore[arg-type]

    def submit_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        """Queue prompts (with optional per-prompt metadata for the reward function); returns prompt ids."""
        request = _convert.submit_prompts_request(run_id, prompts, metadata)
        response: pb.SubmitPromptsResponse = self._unary("SubmitPrompts", request)  # type: ignore[assignment]
        return list(response.prompt_ids)

    def submit_trajectories(self, run_id: str, groups: Sequence[_convert.GroupLike]) -> list[str]:
        """Queue groups of client-built (agentic) trajectories for training; returns group ids.

        Each group is a ``TrajectoryGroup`` or a list of 2+ ``Trajectory`` for the same task. Token ids go
        through untouched; see ``policyopt.client.agentic`` to build them from vLLM responses.
        """
        request = _convert.submit_trajectories_request(run_id, groups)
        response: pb.SubmitTrajectoriesResponse = self._unary("SubmitTrajectories", request)  # type: ignore[assignment]
        return list(response.group_ids)

    # -- adapters --------------------------------------------------------------------------------
    def list_adapters(self, run_id: str) -> list[AdapterVersion]:
        response: pb.ListAdaptersResponse = self._unary("ListAdapters", pb.ListAdaptersRequest(run_id=run_id))  # type: ignore[assignment]
        return [_convert.version_from_proto(v) for v in response.versions]

    def watch_adapters(
        self, run_id: str, after_version: int = 0, timeout: float | None = None
    ) -> Iterator[AdapterVersion]:
        """Versions above ``after_version`` as they are published; ends when the run has ended."""
        request = pb.WatchAdaptersRequest(run_id=run_id, after_version=after_version)
        for version in self._stream("WatchAdapters", request, timeout=timeout):
            yield _convert.version_from_proto(version)  # type: ignore[arg-type]

    def pull_adapter(self, run_id: str, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        """Download a version ("latest" or a number) into ``dest_dir/RUN/vNNNNNN``, sha256-verified."""
        request = pb.PullAdapterRequest(run_id=run_id, version=_convert.version_text(version))
        writer = AdapterWriter(dest_dir)
        try:
            for chunk in self._stream("PullAdapter", request):
                writer.add(chunk)  # type: ignore[arg-type]
            return writer.finish()
        finally:
            writer.abort()

    def wait_for_version(self, run_id: str, version: int, timeout: float | None = None) -> AdapterVersion:
        """Block until ``version`` is published; DeadlineExceeded after ``timeout`` seconds."""
        try:
            for published in self.watch_adapters(run_id, after_version=version - 1, timeout=timeout):
                if published.version >= version:
                    return published
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(
                f"run {run_id} did not publish version {version} within {timeout}s"
            ) from exc
        run = self._run_info(run_id)
        raise FailedPrecondition(
            f"run {run_id} ended ({run.status.value}) at version {run.version} before version {version}"
        )

    # -- methods ---------------------------------------------------------------------------------
    def list_methods(self) -> MethodCatalog:
        return _convert.methods_from_proto(self._unary("ListMethods", pb.ListMethodsRequest()))  # type: ignore[arg-type]


class RunHandle:
    """One run: returned by ``Client.create_run`` and ``Client.get_run``. ``info`` is the last snapshot."""

    def __init__(self, client: Client, info: RunInfo) -> None:
        self.client = client
        self.info = info
        self.run_id = info.run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, status={self.info.status.value}, version={self.info.version})"

    def refresh(self) -> RunInfo:
        self.info = self.client._run_info(self.run_id)
        return self.info

    @property
    def status(self) -> RunStatus:
        return self.refresh().status

    def submit_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return self.client.submit_prompts(self.run_id, prompts, metadata)

    def submit_trajectories(self, groups: Sequence[_convert.GroupLike]) -> list[str]:
        return self.client.submit_trajectories(self.run_id, groups)

    def watch(self, after_event_id: str = "") -> Iterator[RunEvent]:
        return self.client.watch_run(self.run_id, after_event_id)

    def wait_for_version(self, version: int, timeout: float | None = None) -> AdapterVersion:
        return self.client.wait_for_version(self.run_id, version, timeout)

    def list_adapters(self) -> list[AdapterVersion]:
        return self.client.list_adapters(self.run_id)

    def watch_adapters(self, after_version: int = 0) -> Iterator[AdapterVersion]:
        return self.client.watch_adapters(self.run_id, after_version)

    def pull_adapter(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        return self.client.pull_adapter(self.run_id, version, dest_dir)

    def cancel(self) -> RunInfo:
        self.info = self.client.cancel(self.run_id)
        return self.info
