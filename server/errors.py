"""The one place that turns exceptions into gRPC statuses.

Domain errors (``policyopt.core.errors``) keep their message, which says what to fix; their class
name travels in the trailing metadata ``policyopt-error`` so the client raises the same class.
Redis errors are split by cause: a command Redis refused for what it was given (a ``ResponseError`` such as
a bad stream id, or a client-side ``DataError``) is INVALID_ARGUMENT, Redis out of memory is
RESOURCE_EXHAUSTED, and only a Redis that cannot be reached or cannot write (connection, timeout,
read-only replica, missing permission) is UNAVAILABLE. Anything else is logged and becomes INTERNAL.
"""

from __future__ import annotations

import logging

import grpc
import redis

from policyopt.core.errors import PolicyOptError
from policyopt.core.identifiers import quote

log = logging.getLogger(__name__)

ERROR_CLASS_METADATA = "policyopt-error"
MAX_MESSAGE_CHARS = 2000
# Redis replies that say the store itself is unwell, not that the command was wrong.
_STORE_STATE_ERRORS = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
)


def _redis_status(exc: redis.RedisError) -> tuple[grpc.StatusCode, str, str]:
    reply = quote(str(exc), limit=200)
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        message = f"the service's Redis/Valkey is out of memory ({reply}); retry later or ask the operator"
        return grpc.StatusCode.RESOURCE_EXHAUSTED, message, "ResourceExhausted"
    if isinstance(exc, redis.ResponseError | redis.DataError) and not isinstance(exc, _STORE_STATE_ERRORS):
        log.warning("Redis refused a command built from a request: %s", reply)
        message = f"the request's ids or values were refused by the service's store ({reply}); check them"
        return grpc.StatusCode.INVALID_ARGUMENT, message, "InvalidArgument"
    message = f"the service cannot reach its Redis/Valkey ({reply}); retry, or check REDIS_URL on the server"
    return grpc.StatusCode.UNAVAILABLE, message, "Unavailable"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message, error class name) for an exception raised by a handler."""
    if isinstance(exc, PolicyOptError):
        return grpc.StatusCode[exc.code_name], str(exc), type(exc).__name__
    if isinstance(exc, redis.RedisError):
        return _redis_status(exc)
    log.exception("unexpected error in a handler", exc_info=exc)
    message = f"internal error: {type(exc).__name__}: {quote(str(exc), limit=200)}"
    return grpc.StatusCode.INTERNAL, message, "PolicyOptError"


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the call with the status that ``exc`` maps to (raises, as ``context.abort`` does)."""
    code, message, class_name = status_of(exc)
    if len(message) > MAX_MESSAGE_CHARS:  # a last guard: messages quote input, but never at length
        message = message[:MAX_MESSAGE_CHARS] + "... (message cut)"
    context.set_trailing_metadata(((ERROR_CLASS_METADATA, class_name),))
    context.abort(code, message)
