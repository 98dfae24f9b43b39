"""The one place that turns exceptions into gRPC statuses.

Domain errors (``policyopt.core.errors``) keep their message, which says what to fix; their class
name travels in the trailing metadata ``policyopt-error`` so the client raises the same class.
Redis failures become UNAVAILABLE; anything else is logged and becomes INTERNAL.
"""

from __future__ import annotations

import logging

import grpc
import redis

from policyopt.core.errors import PolicyOptError

log = logging.getLogger(__name__)

ERROR_CLASS_METADATA = "policyopt-error"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message, error class name) for an exception raised by a handler."""
    if isinstance(exc, PolicyOptError):
        return grpc.StatusCode[exc.code_name], str(exc), type(exc).__name__
    if isinstance(exc, redis.RedisError):
        message = (
            f"the service cannot reach its Redis/Valkey ({exc}); retry, or check REDIS_URL on the server"
        )
        return grpc.StatusCode.UNAVAILABLE, message, "Unavailable"
    log.exception("unexpected error in a handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "PolicyOptError"


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the call with the status that ``exc`` maps to (raises, as ``context.abort`` does)."""
    code, message, class_name = status_of(exc)
    context.set_trailing_metadata(((ERROR_CLASS_METADATA, class_name),))
    context.abort(code, message)
