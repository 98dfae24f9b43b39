"""Domain errors. One interceptor in `policyopt.server.interceptors` maps them to gRPC status codes.

Hierarchy::

    PolicyOptError
    ├── InvalidArgument       bad input the caller can fix        -> INVALID_ARGUMENT
    ├── NotFound              unknown run, endpoint or version      -> NOT_FOUND
    ├── AlreadyExists         a name that is taken                  -> ALREADY_EXISTS
    ├── FailedPrecondition    valid input, wrong state              -> FAILED_PRECONDITION
    ├── ResourceExhausted     a queue or quota is full              -> RESOURCE_EXHAUSTED
    ├── Unauthenticated       missing or wrong API key              -> UNAUTHENTICATED
    ├── PermissionDenied      a setting of the operator forbids it (an endpoint, a model path) -> PERMISSION_DENIED
    ├── Unavailable           a dependency (Redis, reward endpoint) is down -> UNAVAILABLE
    └── RewardEndpointError   a reward endpoint misbehaved (NaN, wrong count, dead)

Never import grpc here.
"""

from __future__ import annotations


class PolicyOptError(Exception):
    """Base of every error the service raises on purpose."""

    code_name = "INTERNAL"


class InvalidArgument(PolicyOptError):
    code_name = "INVALID_ARGUMENT"


class NotFound(PolicyOptError):
    code_name = "NOT_FOUND"


class AlreadyExists(PolicyOptError):
    code_name = "ALREADY_EXISTS"


class FailedPrecondition(PolicyOptError):
    code_name = "FAILED_PRECONDITION"


class ResourceExhausted(PolicyOptError):
    code_name = "RESOURCE_EXHAUSTED"


class Unauthenticated(PolicyOptError):
    code_name = "UNAUTHENTICATED"


class PermissionDenied(PolicyOptError):
    """The operator's policy forbids the request (an outbound endpoint, an undeclared model); the message
    names the setting."""

    code_name = "PERMISSION_DENIED"


class Unavailable(PolicyOptError):
    code_name = "UNAVAILABLE"


class RewardEndpointError(PolicyOptError):
    """A reward endpoint returned something unusable (NaN, wrong count) or could not be reached.

    ``transient``: the endpoint may answer if asked again later (down, past its deadline, overloaded), so
    the prompt is retried with backoff; otherwise the failure is permanent. ``circuit_open``: the call was
    not made because the endpoint failed too often in a row; the prompt waits ``retry_after_s`` without
    spending an attempt.
    """

    code_name = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        circuit_open: bool = False,
        retry_after_s: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.transient = transient or circuit_open
        self.circuit_open = circuit_open
        self.retry_after_s = retry_after_s
