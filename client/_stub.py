"""The generated ``PolicyOptimizerStub``, typed: grpc's generated code comes without type stubs.

One stub class serves both transports. On a ``grpc.Channel`` (``Stub[Blocking]``) a unary method
returns the response and a streaming one an iterator; on a ``grpc.aio.Channel`` (``Stub[Asyncio]``) they
return an awaitable and an async iterator. ``Stub`` names each RPC's request and response message, so
mypy checks every call against them; ``tests/client/test_calls.py`` checks ``Stub`` against the
service descriptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Protocol, TypeVar, overload

from policyopt.v1 import policyopt_pb2 as pb

Metadata = tuple[tuple[str, str], ...]


class Transport:
    """The kind of channel under a stub; only its two subclasses are used."""


class Blocking(Transport):
    """A ``grpc.Channel``: calls block and return their responses."""


class Asyncio(Transport):
    """A ``grpc.aio.Channel``: calls return awaitables and async iterators."""


T = TypeVar("T", bound=Transport)
T_co = TypeVar("T_co", bound=Transport, covariant=True)
Request_contra = TypeVar("Request_contra", contravariant=True)
Response_co = TypeVar("Response_co", covariant=True)


class ResponseIterator(Protocol[Response_co]):
    """A server stream on a ``grpc.Channel``; cancelling it ends the call."""

    def __iter__(self) -> Iterator[Response_co]: ...

    def cancel(self) -> bool: ...


class AsyncResponseIterator(Protocol[Response_co]):
    """A server stream on a ``grpc.aio.Channel``; cancelling it ends the call."""

    def __aiter__(self) -> AsyncIterator[Response_co]: ...

    def cancel(self) -> bool: ...


class UnaryRpc(Protocol[T_co, Request_contra, Response_co]):
    """A unary-unary method of the stub."""

    @overload
    def __call__(
        self: UnaryRpc[Blocking, Request_contra, Response_co],
        request: Request_contra,
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> Response_co: ...

    @overload
    def __call__(
        self: UnaryRpc[Asyncio, Request_contra, Response_co],
        request: Request_contra,
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> Awaitable[Response_co]: ...


class StreamRpc(Protocol[T_co, Request_contra, Response_co]):
    """A unary-stream method of the stub."""

    @overload
    def __call__(
        self: StreamRpc[Blocking, Request_contra, Response_co],
        request: Request_contra,
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> ResponseIterator[Response_co]: ...

    @overload
    def __call__(
        self: StreamRpc[Asyncio, Request_contra, Response_co],
        request: Request_contra,
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> AsyncResponseIterator[Response_co]: ...


class ClientStreamRpc(Protocol[T_co, Request_contra, Response_co]):
    """A stream-unary method of the stub: the requests are an iterable, the response one message."""

    @overload
    def __call__(
        self: ClientStreamRpc[Blocking, Request_contra, Response_co],
        request: Iterable[Request_contra],
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> Response_co: ...

    @overload
    def __call__(
        self: ClientStreamRpc[Asyncio, Request_contra, Response_co],
        request: Iterable[Request_contra],
        *,
        metadata: Metadata,
        timeout: float | None,
    ) -> Awaitable[Response_co]: ...


class Stub(Protocol[T]):
    """``policyopt_pb2_grpc.PolicyOptimizerStub``: the RPCs the SDK makes."""

    RegisterRewardEndpoint: UnaryRpc[T, pb.RegisterRewardEndpointRequest, pb.RewardEndpoint]
    ListRewardEndpoints: UnaryRpc[T, pb.ListRewardEndpointsRequest, pb.ListRewardEndpointsResponse]
    CreateRun: UnaryRpc[T, pb.CreateRunRequest, pb.Run]
    GetRun: UnaryRpc[T, pb.GetRunRequest, pb.Run]
    ListRuns: UnaryRpc[T, pb.ListRunsRequest, pb.ListRunsResponse]
    CancelRun: UnaryRpc[T, pb.CancelRunRequest, pb.Run]
    WatchRun: StreamRpc[T, pb.WatchRunRequest, pb.RunEvent]
    SubmitPrompts: UnaryRpc[T, pb.SubmitPromptsRequest, pb.SubmitPromptsResponse]
    SubmitTrajectories: UnaryRpc[T, pb.SubmitTrajectoriesRequest, pb.SubmitTrajectoriesResponse]
    FinishEpisode: UnaryRpc[T, pb.FinishEpisodeRequest, pb.FinishEpisodeResponse]
    ListAdapters: UnaryRpc[T, pb.ListAdaptersRequest, pb.ListAdaptersResponse]
    WatchAdapters: StreamRpc[T, pb.WatchAdaptersRequest, pb.AdapterVersion]
    PullAdapter: StreamRpc[T, pb.PullAdapterRequest, pb.AdapterChunk]
    ListMethods: UnaryRpc[T, pb.ListMethodsRequest, pb.ListMethodsResponse]
    AddEvalPrompts: UnaryRpc[T, pb.AddEvalPromptsRequest, pb.AddEvalPromptsResponse]
    UploadAdapter: ClientStreamRpc[T, pb.UploadAdapterChunk, pb.UploadedAdapter]
