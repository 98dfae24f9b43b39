"""Plain dataclasses the SDK returns; no protobuf type leaves ``policyopt.client``.

Metadata values are JSON: numbers travel as doubles, and integral ones come back as ``int``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
    EVAL = "eval"  # a version's held-out evaluation: metrics eval/mean, eval/mean_at_k, eval/pass_at_k, eval/prompts
    PROMOTION = "promotion"  # a version became promoted
    SAMPLE = "sample"  # a few sampled completions of a step (RunEvent.samples)


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
    correctness_component: str  # the reward component the reward-hacking warning watches (default "correct")
    sample_every: int  # a SAMPLE event with a few completions every this many steps (0: the server default)


@dataclass(frozen=True)
class Promotion:
    """When a version becomes promoted, and when the run ends on its eval metric.

    ``rule``: ``"beats_best"`` promotes a version whose eval mean exceeds the best promoted version's (the
    base's while none is) by more than ``margin``; ``"threshold"`` one whose eval mean is ``>= threshold``;
    ``"none"`` promotes nothing. ``stop_at_metric`` ends the run (COMPLETED) once an eval mean reaches it;
    ``patience`` ends it after that many evaluations without a new best (0: never).
    """

    rule: str = "beats_best"
    margin: float = 0.0
    threshold: float = 0.0
    stop_at_metric: float | None = None
    patience: int = 0


@dataclass(frozen=True)
class Retention:
    """Unpromoted versions and trainer states a run keeps (0: all); promoted and newest always stay."""

    keep_versions: int = 0
    keep_trainer_states: int = 0


class EvalOptions(TypedDict, total=False):
    """``create_run``'s held-out evaluation, promotion, warm start and retention options.

    ``eval_prompts`` (with ``eval_metadata``, one mapping per prompt, for the reward function) are scored
    for version 0 and every ``eval_every`` versions (default 1), ``eval_samples`` completions each (k of
    mean@k and pass@k; default 1) at ``eval_temperature`` (default 0: greedy), with ``eval_reward_endpoint``
    (default: the run's). A completion with reward ``>= success_threshold`` (default 1.0) is a success.
    ``init_adapter`` is ``"RUN@vN"`` (a fork) or ``"upload:ID"`` (``upload_adapter``).
    """

    eval_prompts: Sequence[str]
    eval_metadata: Sequence[Mapping[str, JSONValue]]
    eval_every: int
    eval_samples: int
    eval_temperature: float
    eval_reward_endpoint: str
    success_threshold: float
    promotion: Promotion
    init_adapter: str
    retention: Retention


@dataclass(frozen=True)
class UploadedAdapter:
    """An adapter ``upload_adapter`` stored; name it in ``create_run(init_adapter=info.init_adapter)``."""

    upload_id: str
    base_model: str
    rank: int
    target_modules: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    alpha: int = 0
    """The adapter's ``lora_alpha``: pass it as ``create_run(lora_alpha=...)``."""

    @property
    def init_adapter(self) -> str:
        return f"upload:{self.upload_id}"


class EndpointTLS(TypedDict, total=False):
    """How the workers reach a reward endpoint over TLS: ``tls=True`` verifies its certificate against
    ``tls_ca`` (a path or PEM text, sent as PEM) or, without one, the workers' system roots; giving
    ``tls_ca`` implies ``tls``."""

    tls: bool
    tls_ca: str | bytes | os.PathLike[str] | None


class CreateRunOptions(RunOptions, EvalOptions, total=False):
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
    init_adapter: str = ""  # version 0's origin: "RUN@vN" or "upload:ID"; empty: a fresh LoRA
    eval_prompt_count: int = 0  # held-out prompts the run evaluates on
    promoted_version: int = -1  # newest promoted version; -1: none yet
    correctness_component: str = ""  # the reward component the reward-hacking warning watches
    sample_every: int = 0  # a SAMPLE event every this many steps; 0: the server's POLICYOPT_SAMPLE_EVERY


@dataclass(frozen=True)
class CompletionSample:
    """One sampled completion kept by a SAMPLE event: what the model wrote and how it was scored."""

    prompt: str
    completion: str
    reward: float
    components: dict[str, float] = field(default_factory=dict)


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
    samples: tuple[CompletionSample, ...] = ()


@dataclass(frozen=True)
class EpisodeFinished:
    """What ``finish_episode`` made of a proxy session.

    ``trajectories`` is more than 1 when the agent rewrote its history (each rewrite starts a trajectory);
    ``group_id`` is set when this episode completed its task key's group (then ``pending_in_group`` is 0).
    """

    trajectories: int
    model_tokens: int
    pending_in_group: int
    group_id: str = ""


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
    promoted: bool = False  # by the run's promotion rule; serving-sync --promoted-only follows these
    eval: dict[str, float] = field(default_factory=dict)  # held-out evaluation: eval/mean, eval/pass_at_k
    parent: str = ""  # version 0's origin: "RUN@vN" (a fork) or "upload:SHA256"


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
