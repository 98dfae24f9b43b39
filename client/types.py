"""Plain dataclasses the SDK returns; no protobuf type leaves ``policyopt.client``.

Metadata values are JSON: numbers travel as doubles, and integral ones come back as ``int``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]


class RunStatus(StrEnum):
    UNSPECIFIED = "unspecified"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventKind(StrEnum):
    UNSPECIFIED = "unspecified"
    STEP = "step"
    VERSION = "version"
    ERROR = "error"
    WARNING = "warning"
    STATUS = "status"


class RunOptions(TypedDict, total=False):
    """Optional CreateRun fields; any left out take the server defaults."""

    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]
    max_steps: int
    max_staleness: int
    engine: str
    seed: int
    teacher_model: str
    teacher_endpoint: str
    teacher_coef: float


class EndpointTLS(TypedDict, total=False):
    """How the workers reach a reward endpoint over TLS: ``tls=True`` verifies its certificate against
    ``tls_ca`` (a path or PEM text, sent as PEM) or, without one, the workers' system roots; giving
    ``tls_ca`` implies ``tls``."""

    tls: bool
    tls_ca: str | bytes | os.PathLike[str] | None


class CreateRunOptions(RunOptions, total=False):
    """``create_run``'s keyword arguments: the method and its reward endpoint, then any ``RunOptions``.

    ``method`` is a preset name (default ``"grpo"``; ``list_methods()`` shows them), ``reward_side`` and
    ``trajectory_side`` override fields of either axis, ``reward_endpoint`` names a registered endpoint
    (empty for client-built trajectories).
    """

    method: str
    reward_endpoint: str
    reward_side: Mapping[str, JSONValue] | None
    trajectory_side: Mapping[str, JSONValue] | None


@dataclass(frozen=True)
class MethodSettings:
    """A method as CreateRun resolved and pinned it: the preset and every field of both axes."""

    preset: str  # the preset it started from, for display
    reward_side: dict[str, JSONValue]  # every reward-side slot with all its parameters
    trajectory_side: dict[str, JSONValue]  # every trajectory-side slot with all its parameters


def _no_method() -> MethodSettings:
    return MethodSettings("", {}, {})


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of a run: its configuration and progress."""

    run_id: str
    status: RunStatus
    base_model: str
    method: str
    reward_side: dict[str, JSONValue]
    trajectory_side: dict[str, JSONValue]
    reward_endpoint: str
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    max_steps: int
    max_staleness: int
    engine: str
    seed: int
    version: int
    step: int
    prompts_submitted: int
    groups_trained: int
    created_at: float
    error: str
    resolved_method: MethodSettings = field(default_factory=_no_method)  # pinned at CreateRun; empty if older


@dataclass(frozen=True)
class RunEvent:
    event_id: str
    run_id: str
    kind: EventKind
    message: str
    step: int
    version: int
    metrics: dict[str, float]
    timestamp: float


@dataclass(frozen=True)
class AdapterVersion:
    run_id: str
    version: int
    step: int
    base_model: str
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex
    created_at: float = 0.0
    resolved_method: MethodSettings | None = None  # the full method that trained it; None if unpinned


@dataclass(frozen=True)
class RewardEndpoint:
    name: str
    address: str
    timeout_s: float
    tls: bool = False
    tls_ca: str = field(default="", repr=False)  # PEM the workers verify the endpoint with; "": system roots


@dataclass(frozen=True)
class MethodParameter:
    name: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class MethodChoiceInfo:
    axis: str
    name: str
    rationale: str
    parameters: tuple[MethodParameter, ...]


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    reward_side: dict[str, JSONValue]
    trajectory_side: dict[str, JSONValue]


@dataclass(frozen=True)
class MethodCatalog:
    choices: tuple[MethodChoiceInfo, ...]
    presets: tuple[PresetInfo, ...]


class TurnRole(StrEnum):
    MODEL = "model"  # sampled by the policy: token ids, sampler log-probs, adapter version
    ENVIRONMENT = "environment"  # tool output, user or environment tokens: ids only, never trained on


@dataclass(frozen=True)
class Turn:
    """One turn of an agentic trajectory, as token ids (never text: the service does not re-tokenize).

    Build them with ``Turn.model(...)`` and ``Turn.environment(...)``, or with ``policyopt.client.agentic``.
    """

    role: TurnRole
    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    adapter_version: int = 0  # the RUN@vN adapter that sampled a model turn (0: the base model)
    reward: float | None = None  # optional per-turn reward (model turns)

    @classmethod
    def model(
        cls, token_ids: list[int], logprobs: list[float], adapter_version: int, reward: float | None = None
    ) -> Turn:
        return cls(TurnRole.MODEL, list(token_ids), list(logprobs), adapter_version, reward)

    @classmethod
    def environment(cls, token_ids: list[int]) -> Turn:
        return cls(TurnRole.ENVIRONMENT, list(token_ids))


@dataclass(frozen=True)
class Trajectory:
    """A prompt (rendered, as token ids), the turns that followed, and the outcome reward."""

    prompt_ids: list[int]
    turns: list[Turn]
    reward: float = 0.0


@dataclass(frozen=True)
class TrajectoryGroup:
    """Two or more trajectories for one task (compared against each other), with optional metadata."""

    trajectories: list[Trajectory]
    metadata: dict[str, JSONValue] = field(default_factory=dict)


__all__ = [
    "AdapterVersion",
    "CreateRunOptions",
    "EndpointTLS",
    "EventKind",
    "JSONValue",
    "MethodCatalog",
    "MethodChoiceInfo",
    "MethodParameter",
    "MethodSettings",
    "PresetInfo",
    "RewardEndpoint",
    "RunEvent",
    "RunInfo",
    "RunOptions",
    "RunStatus",
    "Trajectory",
    "TrajectoryGroup",
    "Turn",
    "TurnRole",
]
