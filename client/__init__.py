"""policyopt SDK: create runs, submit prompts, host reward functions, pull adapters.

Needs only grpcio and protobuf. Public names::

    Client, RunHandle              blocking client (policyopt.client.sync)
    AsyncClient, AsyncRunHandle    asyncio client (policyopt.client.aio)
    RewardServer                   host a reward function as a RewardService
    tls_credentials                TLS channel credentials from PEM files (policyopt.client.tls)
    Turn, Trajectory, TrajectoryGroup   client-built (agentic) trajectories for submit_trajectories
    policyopt.client.agentic       TrajectoryBuilder, ChatTemplateRenderer: trajectories from vLLM responses
    RunInfo, RunEvent, AdapterVersion, MethodSettings, ...   plain dataclasses (policyopt.client.types)
    PolicyOptError and subclasses  exceptions by the service's names (policyopt.client.errors)
"""

from policyopt.client.aio import AsyncClient, AsyncRunHandle
from policyopt.client.errors import (
    AdapterIntegrityError,
    AlreadyExists,
    DeadlineExceeded,
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
from policyopt.client.reward_server import RewardServer
from policyopt.client.sync import Client, RunHandle
from policyopt.client.tls import tls_credentials
from policyopt.client.types import (
    AdapterVersion,
    CompletionSample,
    CreateRunOptions,
    EndpointTLS,
    EpisodeFinished,
    EventKind,
    MethodCatalog,
    MethodChoiceInfo,
    MethodParameter,
    MethodSettings,
    PresetInfo,
    Promotion,
    Retention,
    RewardEndpoint,
    RunEvent,
    RunInfo,
    RunOptions,
    RunStatus,
    Trajectory,
    TrajectoryGroup,
    Turn,
    TurnRole,
    UploadedAdapter,
)

__all__ = [
    "AdapterIntegrityError",
    "AdapterVersion",
    "AlreadyExists",
    "AsyncClient",
    "AsyncRunHandle",
    "Client",
    "CompletionSample",
    "CreateRunOptions",
    "EndpointTLS",
    "EpisodeFinished",
    "DeadlineExceeded",
    "EventKind",
    "FailedPrecondition",
    "InvalidArgument",
    "MethodCatalog",
    "MethodChoiceInfo",
    "MethodParameter",
    "MethodSettings",
    "NotFound",
    "PermissionDenied",
    "PolicyOptError",
    "PresetInfo",
    "Promotion",
    "ResourceExhausted",
    "Retention",
    "RewardEndpoint",
    "RewardEndpointError",
    "RewardServer",
    "RunEvent",
    "RunHandle",
    "RunInfo",
    "RunOptions",
    "RunStatus",
    "Trajectory",
    "TrajectoryGroup",
    "Turn",
    "TurnRole",
    "UploadedAdapter",
    "Unauthenticated",
    "Unavailable",
    "tls_credentials",
]
