"""``Client`` and ``RunHandle``: the blocking SDK over one gRPC channel.

Each method runs one call of ``policyopt.client._calls`` (where requests, conversions and docstrings
live) and blocks until it is done.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Unpack

import grpc

from policyopt.client import _calls
from policyopt.client._adapters import AdapterWriter
from policyopt.client._calls import (
    CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    Out,
    Request,
    Response,
    Stream,
    Unary,
    Upload,
    auth_metadata,
    docs_from,
)
from policyopt.client._convert import GroupLike
from policyopt.client._stub import Blocking, Stub
from policyopt.client._telemetry import traced_channel
from policyopt.client.errors import streaming, translating
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


class Client(_calls.ClientBase[Blocking]):
    """Blocking client of the PolicyOptimizer service.

    ``api_key`` defaults to ``POLICYOPT_API_KEY``; ``timeout`` is the deadline of each unary call.
    ``tls_ca`` (and ``tls_cert``/``tls_key`` for mutual TLS) connect over TLS: see ``ClientBase``.
    """

    def _connect(self, address: str, credentials: grpc.ChannelCredentials | None) -> Stub[Blocking]:
        if credentials is not None:
            self._raw_channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            self._raw_channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub: Stub[Blocking] = pb_grpc.PolicyOptimizerStub(traced_channel(self._raw_channel))
        return stub

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, call: Unary[Blocking, Request, Response, Out]) -> Out:
        with translating(self._unreachable_hint):
            response = call.method(self._stub)(call.request, metadata=self._auth, timeout=self.timeout)
        return call.convert(response)

    def _upload(self, call: Upload[Blocking, Request, Response, Out]) -> Out:
        with translating(self._unreachable_hint):
            response = call.method(self._stub)(iter(call.requests), metadata=self._auth, timeout=self.timeout)
        return call.convert(response)

    def _stream(self, call: Stream[Blocking, Request, Response, Out]) -> Iterator[Out]:
        responses = call.method(self._stub)(call.request, metadata=self._auth, timeout=call.timeout)
        with streaming(responses, self._unreachable_hint):
            for response in responses:
                yield call.convert(response)

    # -- reward endpoints ------------------------------------------------------------------------
    @docs_from(_calls.register_reward_endpoint)
    def register_reward_endpoint(
        self, name: str, address: str, timeout_s: float = 0.0, **tls: Unpack[EndpointTLS]
    ) -> RewardEndpoint:
        return self._call(_calls.register_reward_endpoint(name, address, timeout_s, tls))

    @docs_from(_calls.list_reward_endpoints)
    def list_reward_endpoints(self) -> list[RewardEndpoint]:
        return self._call(_calls.list_reward_endpoints())

    # -- runs ------------------------------------------------------------------------------------
    @docs_from(_calls.create_run)
    def create_run(self, base_model: str, **options: Unpack[CreateRunOptions]) -> RunHandle:
        return RunHandle(self, self._call(_calls.create_run(base_model, options)))

    @docs_from(_calls.get_run)
    def get_run(self, run_id: str) -> RunHandle:
        return RunHandle(self, self._call(_calls.get_run(run_id)))

    @docs_from(_calls.list_runs)
    def list_runs(self) -> list[RunInfo]:
        return self._call(_calls.list_runs())

    @docs_from(_calls.cancel)
    def cancel(self, run_id: str) -> RunInfo:
        return self._call(_calls.cancel(run_id))

    @docs_from(_calls.watch_run)
    def watch_run(self, run_id: str, after_event_id: str = "") -> Iterator[RunEvent]:
        return self._stream(_calls.watch_run(run_id, after_event_id))

    @docs_from(_calls.submit_prompts)
    def submit_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return self._call(_calls.submit_prompts(run_id, prompts, metadata))

    @docs_from(_calls.submit_trajectories)
    def submit_trajectories(self, run_id: str, groups: Sequence[GroupLike]) -> list[str]:
        return self._call(_calls.submit_trajectories(run_id, groups))

    @docs_from(_calls.finish_episode)
    def finish_episode(
        self,
        run_id: str,
        session_id: str,
        reward: float,
        task_key: str = "",
        components: Mapping[str, float] | None = None,
    ) -> EpisodeFinished:
        return self._call(_calls.finish_episode(run_id, session_id, reward, task_key, components))

    # -- adapters --------------------------------------------------------------------------------
    @docs_from(_calls.list_adapters)
    def list_adapters(self, run_id: str, promoted_only: bool = False) -> list[AdapterVersion]:
        return self._call(_calls.list_adapters(run_id, promoted_only))

    @docs_from(_calls.watch_adapters)
    def watch_adapters(
        self, run_id: str, after_version: int = 0, timeout: float | None = None, promoted_only: bool = False
    ) -> Iterator[AdapterVersion]:
        return self._stream(_calls.watch_adapters(run_id, after_version, timeout, promoted_only))

    @docs_from(_calls.add_eval_prompts)
    def add_eval_prompts(
        self, run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> int:
        return self._call(_calls.add_eval_prompts(run_id, prompts, metadata))

    @docs_from(_calls.upload_adapter)
    def upload_adapter(self, directory: str | os.PathLike[str], base_model: str) -> UploadedAdapter:
        return self._upload(_calls.upload_adapter(directory, base_model))

    @docs_from(_calls.pull_adapter)
    def pull_adapter(self, run_id: str, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        with AdapterWriter(dest_dir) as writer:
            for chunk in self._stream(_calls.pull_adapter(run_id, version)):
                writer.add(chunk)
            return writer.finish()

    @docs_from(_calls.wait_for_version)
    def wait_for_version(self, run_id: str, version: int, timeout: float | None = None) -> AdapterVersion:
        wait = _calls.wait_for_version(run_id, version, timeout)
        with wait.deadline():
            published = next(filter(wait.reached, self._stream(wait.watch())), None)
        if published is None:
            raise wait.ended(self._call(wait.run_info()))
        return published

    # -- methods ---------------------------------------------------------------------------------
    @docs_from(_calls.list_methods)
    def list_methods(self) -> MethodCatalog:
        return self._call(_calls.list_methods())


class RunHandle(_calls.RunHandleBase[Client]):
    """One run: returned by ``Client.create_run`` and ``Client.get_run``. ``info`` is the last snapshot."""

    def refresh(self) -> RunInfo:
        """Fetch the run's current snapshot and keep it as ``info``."""
        self.info = self.client._call(_calls.get_run(self.run_id))
        return self.info

    @property
    def status(self) -> RunStatus:
        """The run's status, fetched now."""
        return self.refresh().status

    @docs_from(_calls.submit_prompts)
    def submit_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> list[str]:
        return self.client.submit_prompts(self.run_id, prompts, metadata)

    @docs_from(_calls.submit_trajectories)
    def submit_trajectories(self, groups: Sequence[GroupLike]) -> list[str]:
        return self.client.submit_trajectories(self.run_id, groups)

    @docs_from(_calls.finish_episode)
    def finish_episode(
        self,
        session_id: str,
        reward: float,
        task_key: str = "",
        components: Mapping[str, float] | None = None,
    ) -> EpisodeFinished:
        return self.client.finish_episode(self.run_id, session_id, reward, task_key, components)

    @docs_from(_calls.watch_run)
    def watch(self, after_event_id: str = "") -> Iterator[RunEvent]:
        return self.client.watch_run(self.run_id, after_event_id)

    @docs_from(_calls.wait_for_version)
    def wait_for_version(self, version: int, timeout: float | None = None) -> AdapterVersion:
        return self.client.wait_for_version(self.run_id, version, timeout)

    @docs_from(_calls.list_adapters)
    def list_adapters(self, promoted_only: bool = False) -> list[AdapterVersion]:
        return self.client.list_adapters(self.run_id, promoted_only)

    @docs_from(_calls.watch_adapters)
    def watch_adapters(self, after_version: int = 0, promoted_only: bool = False) -> Iterator[AdapterVersion]:
        return self.client.watch_adapters(self.run_id, after_version, promoted_only=promoted_only)

    @docs_from(_calls.add_eval_prompts)
    def add_eval_prompts(
        self, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None = None
    ) -> int:
        return self.client.add_eval_prompts(self.run_id, prompts, metadata)

    @docs_from(_calls.pull_adapter)
    def pull_adapter(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        return self.client.pull_adapter(self.run_id, version, dest_dir)

    @docs_from(_calls.cancel)
    def cancel(self) -> RunInfo:
        self.info = self.client.cancel(self.run_id)
        return self.info


__all__ = ["DEFAULT_ADDRESS", "Client", "RunHandle", "auth_metadata"]
