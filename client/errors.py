"""Exceptions the SDK raises: the service's domain errors, by the same names.

Hierarchy (the service's classes are reused from the stdlib-only ``policyopt.core.errors``)::

    PolicyOptError                 any failed call; INTERNAL, UNKNOWN and unmapped codes
    ├── InvalidArgument            INVALID_ARGUMENT: fix the request
    ├── NotFound                   NOT_FOUND: unknown run, endpoint or version (or another tenant's)
    ├── AlreadyExists              ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION: valid request, wrong state
    ├── ResourceExhausted          RESOURCE_EXHAUSTED: a queue is full; retry later
    ├── Unauthenticated            UNAUTHENTICATED: missing or wrong API key
    ├── PermissionDenied           PERMISSION_DENIED: the operator's policy forbids it (an endpoint, a model)
    ├── Unavailable                UNAVAILABLE: the server or its Redis is unreachable
    ├── RewardEndpointError        a reward endpoint misbehaved
    ├── DeadlineExceeded           DEADLINE_EXCEEDED, or a client-side wait timed out (also a TimeoutError)
    └── AdapterIntegrityError      a pulled adapter file does not match its sha256

``error_from_rpc`` is the one place that maps a ``grpc.RpcError`` to these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import grpc

from policyopt.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyOptError,
    ResourceExhausted,
    RewardEndpointError,
    Unauthenticated,
    Unavailable,
)

ERROR_CLASS_METADATA = "policyopt-error"


class DeadlineExceeded(PolicyOptError, TimeoutError):
    code_name = "DEADLINE_EXCEEDED"


class AdapterIntegrityError(PolicyOptError):
    """A pulled file's sha256 differs from the manifest, or a file is missing."""

    code_name = "DATA_LOSS"


_BY_NAME: dict[str, type[PolicyOptError]] = {
    cls.__name__: cls
    for cls in (
        PolicyOptError, InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted,
        Unauthenticated, Unavailable, RewardEndpointError, DeadlineExceeded, AdapterIntegrityError,
        PermissionDenied,
    )
}  # fmt: skip
_BY_CODE: dict[grpc.StatusCode, type[PolicyOptError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: AdapterIntegrityError,
}


def _class_name_from(exc: grpc.RpcError) -> str:
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else None
    except Exception:  # some channel errors carry no metadata at all
        metadata = None
    for key, value in metadata or ():
        if key == ERROR_CLASS_METADATA and isinstance(value, str):
            return value
    return ""


def _transport_limit_hint(details: str) -> str:
    """What to do about the limits grpc enforces itself, before the service sees the call."""
    if "larger than max" in details:
        return (
            "; the message is larger than the server accepts (its POLICYOPT_MAX_REQUEST_MB, or the client's "
            "own receive limit): send fewer prompts or trajectories per call"
        )
    if "Concurrent RPC limit" in details:
        return "; the server is serving all the calls its threads allow: retry in a moment"
    return ""


def error_from_rpc(exc: grpc.RpcError, unreachable_hint: str = "") -> PolicyOptError:
    """The SDK exception for a failed call: the server's error class when it sent one, else by status code.

    ``unreachable_hint`` is added to an UNAVAILABLE that the channel raised (the server sent nothing),
    to say what to check: a plaintext client of a TLS server sees only "Socket closed".
    """
    code_method = getattr(exc, "code", None)
    code = code_method() if callable(code_method) else grpc.StatusCode.UNKNOWN
    details_method = getattr(exc, "details", None)
    details = (details_method() if callable(details_method) else None) or str(code)
    class_name = _class_name_from(exc)
    if code == grpc.StatusCode.UNAVAILABLE and not class_name and unreachable_hint:
        details = f"{details}; {unreachable_hint}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not class_name:
        details = f"{details}{_transport_limit_hint(details)}"
    cls = _BY_NAME.get(class_name) or _BY_CODE.get(code, PolicyOptError)
    error = cls(details)
    vars(error)["status_code"] = code  # the core's error classes know nothing of grpc, so no such field
    return error


@contextlib.contextmanager
def translating(unreachable_hint: str = "") -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` raised inside the block as the matching SDK exception."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, unreachable_hint) from exc


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


@contextlib.contextmanager
def streaming(call: _Cancellable, unreachable_hint: str = "") -> Iterator[None]:
    """Read a server stream in the block: its errors as SDK exceptions, and the call cancelled on leaving.

    A cancelled call just ends the block; leaving the loop early is how a caller stops a stream.
    """
    try:
        yield
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise error_from_rpc(exc, unreachable_hint) from exc
    finally:
        call.cancel()


__all__ = [
    "AdapterIntegrityError",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PolicyOptError",
    "ResourceExhausted",
    "RewardEndpointError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
    "streaming",
    "translating",
]
