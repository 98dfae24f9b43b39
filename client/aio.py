"""``AsyncClient`` and ``AsyncRunHandle``: the same calls as ``Client``, on ``grpc.aio``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Unpack

import grpc
import grpc.aio

from policyopt.client import _convert
from policyopt.client._adapters import AdapterWriter
from policyopt.client._telemetry import trace_metadata
from policyopt.client.errors import DeadlineExceeded, FailedPrecondition, error_from_rpc, translating
from policyopt.client.sync import DEFAULT_ADDRESS, auth_metadata
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


class AsyncClient:
    """Asyncio client of the PolicyOptimizer service; ``async with AsyncClient(...) as client``."""

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
        self._auth = auth_metadata(api_key)
        options = [("grpc.max_receive_message_length", 8 << 20)]
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.PolicyOptimizerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self._auth + tuple(trace_metadata())

    async def _unary(self, method: str, request: object) -> object:
        with translating():
            return await getattr(self._stub, method)(request, metadata=self._metadata(), timeout=self.timeout)

    async def _stream(
        self, method: str, request: object, timeout: float | None = None
    ) -> AsyncIterator[object]:
        call = getattr(self._stub, method)(request, metadata=self._metadata(), timeout=timeout)
        try:
            async for item in call:
                yield item
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def register_reward_endpoint(
        self, name: str, address: str, timeout_s: float = 0.0
    ) -> RewardEndpoint:
        request = pb.RegisterRewardEndpointRequest(name=name, address=address, timeout_s=timeout_s)
        return _convert.endpoint_from_proto(await self._unary("RegisterRewardEndpoint", request))  # type: ignore[arg-type]

    async def list_reward_endpoints(self) -> list[RewardEndpoint]:
        response: pb.ListRewardEndpointsResponse = await self._unary(
            "ListRewardEndpoints", pb.ListRewardEndpointsRequest()
        )  # type: ignore[assignment]
        return [_convert.endpoint_from_proto(e) for e in response.endpoints]

    async def create_run(
        self,
        base_model: str,
        *,
        method: str = "grpo",
        reward_endpoint: str = "",
        reward_side: Mapping[str, JSONValue] | None = None,
        trajectory_side: Mapping[str, JSONValue] | None = None,
        **options: Unpack[RunOptions],
    ) -> AsyncRunHandle:
        request = _convert.create_run_request(
            base_model, method, reward_endpoint, reward_side, trajectory_side, options
        )
        return AsyncRunHandle(self, _convert.run_from_proto(await self._unary("CreateRun", request)))  # type: ignore[arg-type]

    async def get_run(self, run_id: str) -> AsyncRunHandle:
        return AsyncRunHandle(self, await self._run_info(run_id))

    async def _run_info(self, run_id: str) -> RunInfo:
        return _convert.run_from_proto(await self._unary("GetRun", pb.GetRunRequest(run_id=run_id)))  # type: ignore[arg-type]

    async def list_runs(self) -> list[RunInfo]:
        response: pb.ListRunsResponse = await self._unary("ListRuns", pb.ListRunsRequest())  # type: ignore[assignment]
        return [_convert.run_from_proto(r) for r in response.runs]

    async def cancel(self, run_id: str) -> RunInfo:
        return _convert.run_from_proto(await self._unary("CancelRun", pb.CancelRunRequest(run_id=run_id)))  # type: ignore[arg-type]

    async def watch_run(self, run_id: str, after_event_id: str = "") -> AsyncIterator[RunEvent]:
        request = pb.WatchRunRequest(run_id=run_id, after_event_id=after_event_id)
        async for event in self._stream("WatchRun", request):
            yield _convert.event_from_proto(event)  # type: ignore[arg-type]

    async def submit_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        request = _convert.submit_prompts_request(run_id, prompts, metadata)
        response: pb.SubmitPromptsResponse = await self._unary("SubmitPrompts", request)  # type: ignore[assignment]
        return list(response.prompt_ids)

    async def submit_trajectories(self, run_id: str, groups: Sequence[_convert.GroupLike]) -> list[str]:
        """Queue groups of client-built (agentic) trajectories; see ``Client.submit_trajectories``."""
        request = _convert.submit_trajectories_request(run_id, groups)
        response: pb.SubmitTrajectoriesResponse = await self._unary("SubmitTrajectories", request)  # type: ignore[assignment]
        return list(response.group_ids)

    async def list_adapters(self, run_id: str) -> list[AdapterVersion]:
        response: pb.ListAdaptersResponse = await self._unary(
            "ListAdapters", pb.ListAdaptersRequest(run_id=run_id)
        )  # type: ignore[assignment]
        return [_convert.version_from_proto(v) for v in response.versions]

    async def watch_adapters(
        self, run_id: str, after_version: int = 0, timeout: float | None = None
    ) -> AsyncIterator[AdapterVersion]:
        request = pb.WatchAdaptersRequest(run_id=run_id, after_version=after_version)
        async for version in self._stream("WatchAdapters", request, timeout=timeout):
            yield _convert.version_from_proto(version)  # type: ignore[arg-type]

    async def pull_adapter(self, run_id: str, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        request = pb.PullAdapterRequest(run_id=run_id, version=_convert.version_text(version))
        writer = AdapterWriter(dest_dir)
        try:
            async for chunk in self._stream("PullAdapter", request):
                writer.add(chunk)  # type: ignore[arg-type]
            return writer.finish()
        finally:
            writer.abort()

    async def wait_for_version(
        self, run_id: str, version: int, timeout: float | None = None
    ) -> AdapterVersion:
        try:
            async for published in self.watch_adapters(run_id, after_version=version - 1, timeout=timeout):
                if published.version >= version:
                    return published
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(
                f"run {run_id} did not publish version {version} within {timeout}s"
            ) from exc
        run = await self._run_info(run_id)
        raise FailedPrecondition(
            f"run {run_id} ended ({run.status.value}) at version {run.version} before version {version}"
        )

    async def list_methods(self) -> MethodCatalog:
        return _convert.methods_from_proto(await self._unary("ListMethods", pb.ListMethodsRequest()))  # type: ignore[arg-type]


class AsyncRunHandle:
    """One run, for ``AsyncClient``; the same methods as ``RunHandle``, awaitable."""

    def __init__(self, client: AsyncClient, info: RunInfo) -> None:
        self.client = client
        self.info = info
        self.run_id = info.run_id

    def __repr__(self) -> str:
        return (
            f"AsyncRunHandle({self.run_id!r}, status={self.info.status.value}, version={self.info.version})"
        )

    async def refresh(self) -> RunInfo:
        self.info = await self.client._run_info(self.run_id)
        return self.info

    async def status(self) -> RunStatus:
        return (await self.refresh()).status

    async def submit_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return await self.client.submit_prompts(self.run_id, prompts, metadata)

    async def submit_trajectories(self, groups: Sequence[_convert.GroupLike]) -> list[str]:
        return await self.client.submit_trajectories(self.run_id, groups)

    def watch(self, after_event_id: str = "") -> AsyncIterator[RunEvent]:
        return self.client.watch_run(self.run_id, after_event_id)

    async def wait_for_version(self, version: int, timeout: float | None = None) -> AdapterVersion:
        return await self.client.wait_for_version(self.run_id, version, timeout)

    async def list_adapters(self) -> list[AdapterVersion]:
        return await self.client.list_adapters(self.run_id)

    def watch_adapters(self, after_version: int = 0) -> AsyncIterator[AdapterVersion]:
        return self.client.watch_adapters(self.run_id, after_version)

    async def pull_adapter(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        return await self.client.pull_adapter(self.run_id, version, dest_dir)

    async def cancel(self) -> RunInfo:
        self.info = await self.client.cancel(self.run_id)
        return self.info
