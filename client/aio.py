"""``AsyncClient`` and ``AsyncRunHandle``: the same calls as ``Client``, on ``grpc.aio``.

Each method awaits one call of ``policyopt.client._calls``; the docstrings come from there (or, for the
few methods that are no call, from ``Client`` and ``RunHandle``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Unpack

import grpc
import grpc.aio

from policyopt.client import _calls
from policyopt.client._adapters import AdapterWriter
from policyopt.client._calls import CHANNEL_OPTIONS, Out, Request, Response, Stream, Unary, Upload, docs_from
from policyopt.client._convert import GroupLike
from policyopt.client._stub import Asyncio, Metadata, Stub
from policyopt.client._telemetry import trace_metadata
from policyopt.client.errors import streaming, translating
from policyopt.client.sync import Client, RunHandle
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
    RunStatus,
    UploadedAdapter,
)
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc


class AsyncClient(_calls.ClientBase[Asyncio]):
    """Asyncio client of the PolicyOptimizer service; ``async with AsyncClient(...) as client``."""

    def _connect(self, address: str, credentials: grpc.ChannelCredentials | None) -> Stub[Asyncio]:
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub: Stub[Asyncio] = pb_grpc.PolicyOptimizerStub(self._channel)
        return stub

    @docs_from(Client.close)
    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _metadata(self) -> Metadata:
        """The API key, and the trace context of the caller at this call."""
        return self._auth + tuple(trace_metadata())

    async def _call(self, call: Unary[Asyncio, Request, Response, Out]) -> Out:
        send = call.method(self._stub)
        with translating(self._unreachable_hint):
            response = await send(call.request, metadata=self._metadata(), timeout=self.timeout)
        return call.convert(response)

    async def _upload(self, call: Upload[Asyncio, Request, Response, Out]) -> Out:
        send = call.method(self._stub)
        with translating(self._unreachable_hint):
            response = await send(iter(call.requests), metadata=self._metadata(), timeout=self.timeout)
        return call.convert(response)

    async def _stream(self, call: Stream[Asyncio, Request, Response, Out]) -> AsyncGenerator[Out, None]:
        responses = call.method(self._stub)(call.request, metadata=self._metadata(), timeout=call.timeout)
        with streaming(responses, self._unreachable_hint):
            async for response in responses:
                yield call.convert(response)

    @docs_from(_calls.register_reward_endpoint)
    async def register_reward_endpoint(
        self, name: str, address: str, timeout_s: float = 0.0, **tls: Unpack[EndpointTLS]
    ) -> RewardEndpoint:
        return await self._call(_calls.register_reward_endpoint(name, address, timeout_s, tls))

    @docs_from(_calls.list_reward_endpoints)
    async def list_reward_endpoints(self) -> list[RewardEndpoint]:
        return await self._call(_calls.list_reward_endpoints())

    @docs_from(_calls.create_run)
    async def create_run(self, base_model: str, **options: Unpack[CreateRunOptions]) -> AsyncRunHandle:
        return AsyncRunHandle(self, await self._call(_calls.create_run(base_model, options)))

    @docs_from(_calls.get_run)
    async def get_run(self, run_id: str) -> AsyncRunHandle:
        return AsyncRunHandle(self, await self._call(_calls.get_run(run_id)))

    @docs_from(_calls.list_runs)
    async def list_runs(self) -> list[RunInfo]:
        return await self._call(_calls.list_runs())

    @docs_from(_calls.cancel)
    async def cancel(self, run_id: str) -> RunInfo:
        return await self._call(_calls.cancel(run_id))

    @docs_from(_calls.watch_run)
    def watch_run(self, run_id: str, after_event_id: str = "") -> AsyncIterator[RunEvent]:
        return self._stream(_calls.watch_run(run_id, after_event_id))

    @docs_from(_calls.submit_prompts)
    async def submit_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return await self._call(_calls.submit_prompts(run_id, prompts, metadata))

    @docs_from(_calls.submit_trajectories)
    async def submit_trajectories(self, run_id: str, groups: Sequence[GroupLike]) -> list[str]:
        return await self._call(_calls.submit_trajectories(run_id, groups))

    @docs_from(_calls.finish_episode)
    async def finish_episode(
        self,
        run_id: str,
        session_id: str,
        reward: float,
        task_key: str = "",
        components: Mapping[str, float] | None = None,
    ) -> EpisodeFinished:
        return await self._call(_calls.finish_episode(run_id, session_id, reward, task_key, components))

    @docs_from(_calls.list_adapters)
    async def list_adapters(self, run_id: str, promoted_only: bool = False) -> list[AdapterVersion]:
        return await self._call(_calls.list_adapters(run_id, promoted_only))

    @docs_from(_calls.watch_adapters)
    def watch_adapters(
        self, run_id: str, after_version: int = 0, timeout: float | None = None, promoted_only: bool = False
    ) -> AsyncIterator[AdapterVersion]:
        return self._stream(_calls.watch_adapters(run_id, after_version, timeout, promoted_only))

    @docs_from(_calls.add_eval_prompts)
    async def add_eval_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> int:
        return await self._call(_calls.add_eval_prompts(run_id, prompts, metadata))

    @docs_from(_calls.upload_adapter)
    async def upload_adapter(self, directory: str | os.PathLike[str], base_model: str) -> UploadedAdapter:
        return await self._upload(_calls.upload_adapter(directory, base_model))

    @docs_from(_calls.pull_adapter)
    async def pull_adapter(self, run_id: str, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        with AdapterWriter(dest_dir) as writer:
            async for chunk in self._stream(_calls.pull_adapter(run_id, version)):
                writer.add(chunk)
            return writer.finish()

    @docs_from(_calls.wait_for_version)
    async def wait_for_version(
        self, run_id: str, version: int, timeout: float | None = None
    ) -> AdapterVersion:
        wait = _calls.wait_for_version(run_id, version, timeout)
        with wait.deadline():
            async with contextlib.aclosing(self._stream(wait.watch())) as watch:
                published = await anext((v async for v in watch if wait.reached(v)), None)
        if published is None:
            raise wait.ended(await self._call(wait.run_info()))
        return published

    @docs_from(_calls.list_methods)
    async def list_methods(self) -> MethodCatalog:
        return await self._call(_calls.list_methods())


class AsyncRunHandle(_calls.RunHandleBase[AsyncClient]):
    """One run, for ``AsyncClient``; the same methods as ``RunHandle``, awaitable."""

    @docs_from(RunHandle.refresh)
    async def refresh(self) -> RunInfo:
        self.info = await self.client._call(_calls.get_run(self.run_id))
        return self.info

    @docs_from(RunHandle.status)
    async def status(self) -> RunStatus:
        return (await self.refresh()).status

    @docs_from(_calls.submit_prompts)
    async def submit_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return await self.client.submit_prompts(self.run_id, prompts, metadata)

    @docs_from(_calls.submit_trajectories)
    async def submit_trajectories(self, groups: Sequence[GroupLike]) -> list[str]:
        return await self.client.submit_trajectories(self.run_id, groups)

    @docs_from(_calls.finish_episode)
    async def finish_episode(
        self,
        session_id: str,
        reward: float,
        task_key: str = "",
        components: Mapping[str, float] | None = None,
    ) -> EpisodeFinished:
        return await self.client.finish_episode(self.run_id, session_id, reward, task_key, components)

    @docs_from(_calls.watch_run)
    def watch(self, after_event_id: str = "") -> AsyncIterator[RunEvent]:
        return self.client.watch_run(self.run_id, after_event_id)

    @docs_from(_calls.wait_for_version)
    async def wait_for_version(self, version: int, timeout: float | None = None) -> AdapterVersion:
        return await self.client.wait_for_version(self.run_id, version, timeout)

    @docs_from(_calls.list_adapters)
    async def list_adapters(self, promoted_only: bool = False) -> list[AdapterVersion]:
        return await self.client.list_adapters(self.run_id, promoted_only)

    @docs_from(_calls.watch_adapters)
    def watch_adapters(
        self, after_version: int = 0, promoted_only: bool = False
    ) -> AsyncIterator[AdapterVersion]:
        return self.client.watch_adapters(self.run_id, after_version, promoted_only=promoted_only)

    @docs_from(_calls.add_eval_prompts)
    async def add_eval_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> int:
        return await self.client.add_eval_prompts(self.run_id, prompts, metadata)

    @docs_from(_calls.pull_adapter)
    async def pull_adapter(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        return await self.client.pull_adapter(self.run_id, version, dest_dir)

    @docs_from(_calls.cancel)
    async def cancel(self) -> RunInfo:
        self.info = await self.client.cancel(self.run_id)
        return self.info
