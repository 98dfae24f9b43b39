"""Dataclasses exchanged between the server, Redis and the workers.

They serialize to JSON with ``to_json``/``from_json`` for Redis messages and hashes.
Protobuf conversion lives only in ``policyopt.server.convert`` and ``policyopt.client``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")

JSONValue = Any  # JSON-compatible metadata supplied by users


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventKind(StrEnum):
    STEP = "step"  # a training step committed; metrics attached
    VERSION = "version"  # an adapter version published
    ERROR = "error"  # something failed for one prompt or group; the run goes on
    WARNING = "warning"  # a diagnostic signature (e.g. compound failure) was seen
    STATUS = "status"  # the run changed status
    EVAL = "eval"  # a version's held-out evaluation; metrics eval/...
    SAMPLE = "sample"  # a few sampled completions kept for reading (RunEvent.samples)
    PROMOTION = "promotion"  # a version became promoted


@dataclass(frozen=True)
class MethodChoice:
    """What the run asked for: a preset name plus overrides on either axis (field -> value)."""

    preset: str = "grpo"
    reward_side: dict[str, JSONValue] = field(default_factory=dict)
    trajectory_side: dict[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedMethod:
    """A run's method as CreateRun resolved and pinned it: every field of both axes, as JSON.

    Each slot holds ``{"name": ..., <every param>: ...}`` (list slots a list of those) and each plain field
    its value, so the method is rebuilt from this alone, never from a preset: editing a preset later does
    not change a run in flight. ``preset`` names what it started from, for display.
    """

    preset: str
    reward_side: dict[str, JSONValue] = field(default_factory=dict)
    trajectory_side: dict[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherConfig:
    """GRPO-OPD teacher: a local model path or a served endpoint, and the distillation coefficient."""

    model: str = ""
    endpoint: str = ""
    coef: float = 0.0


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt and the metadata its reward endpoint needs."""

    text: str
    metadata: dict[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of a run's versions (version 0, then every ``every`` versions).

    ``samples`` completions per prompt give mean@k and an unbiased pass@k (a completion with reward
    >= ``success_threshold`` is a success). ``temperature`` 0 is greedy. ``reward_endpoint`` empty:
    the run's own endpoint. The prompts themselves live in Redis (``RunStore``), not in the config.
    """

    every: int = 0  # 0: no evaluation
    samples: int = 1
    reward_endpoint: str = ""
    temperature: float = 0.0
    success_threshold: float = 1.0


@dataclass(frozen=True)
class PromotionConfig:
    """When a version becomes promoted, and when the run stops on its eval metric."""

    rule: str = "none"  # none | beats_best | threshold
    margin: float = 0.0
    threshold: float = 0.0
    stop_at_metric: float | None = None
    patience: int = 0  # evaluations without a new best before the run ends; 0: never


@dataclass(frozen=True)
class RetentionConfig:
    """Unpromoted versions and trainer states kept (0: all); promoted and newest are always kept."""

    keep_versions: int = 0
    keep_trainer_states: int = 0


MAX_REWARD_COMPONENTS = 16
"""Named reward components one score may carry (each becomes a metric series of the run)."""


@dataclass(frozen=True)
class CompletionSample:
    """One sampled completion kept for reading (SAMPLE events)."""

    prompt: str
    completion: str
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    base_model: str
    reward_endpoint: str = ""
    method: MethodChoice = field(default_factory=MethodChoice)
    group_size: int = 4
    prompts_per_step: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    learning_rate: float = 1e-5
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_steps: int = 0  # 0: train for as long as prompts arrive
    max_staleness: int = 1  # versions a rollout may lag the trainer
    engine: str = "transformers"  # rollout engine: transformers or vllm
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # Set by CreateRun; None only in run records written before methods were pinned (resolved from
    # ``method`` then).
    resolved_method: ResolvedMethod | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    init_adapter: str = ""  # "RUN@vN" (a fork) or "upload:<id>"; empty: a fresh LoRA
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    correctness_component: str = ""  # the reward component the reward-hacking warning watches
    sample_every: int = 0  # SAMPLE event every this many steps; 0: the server default


@dataclass
class Run:
    run_id: str
    tenant: str
    config: RunConfig
    status: RunStatus = RunStatus.RUNNING
    created_at: float = field(default_factory=time.time)
    version: int = 0  # latest published adapter version; 0 is the base model
    step: int = 0
    prompts_submitted: int = 0
    groups_trained: int = 0
    error: str = ""


@dataclass(frozen=True)
class PromptTask:
    """One prompt waiting for rollouts."""

    run_id: str
    prompt_id: str
    prompt: str
    metadata: dict[str, JSONValue] = field(default_factory=dict)
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace-context carrier
    attempt: int = 0  # times dynamic sampling sent this prompt back for fresh samples
    reward_attempts: int = 0  # rollouts whose reward call failed transiently (retried with backoff)


@dataclass(frozen=True)
class Trajectory:
    """One sampled completion with the ids and sampler log-probs the trainer needs.

    ``loss_mask`` is 1 on tokens the policy produced (0 on environment/tool tokens in agentic turns);
    empty means all completion tokens are trained. Agentic trajectories (``SubmitTrajectories``) also
    carry one entry per model turn in ``turn_ends`` (exclusive end of the turn in ``completion_ids``)
    and ``turn_rewards`` (that turn's reward, 0.0 when none was given); ``reward`` is the outcome.
    """

    completion_ids: list[int]
    sampler_logprobs: list[float]
    text: str = ""
    reward: float = 0.0
    finish_reason: str = "length"
    loss_mask: list[int] = field(default_factory=list)
    reward_components: dict[str, float] = field(default_factory=dict)  # named sub-rewards, when scored so
    version: int = 0
    turn_ends: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)

    @property
    def total_reward(self) -> float:
        """Outcome reward plus every per-turn reward: the raw score of the trajectory."""
        return self.reward + sum(self.turn_rewards)


@dataclass(frozen=True)
class TrajectoryGroup:
    """group_size trajectories for one prompt, scored, ready to train on."""

    run_id: str
    group_id: str
    prompt_id: str
    prompt: str
    prompt_ids: list[int]
    trajectories: list[Trajectory]
    adapter_version: int
    metadata: dict[str, JSONValue] = field(default_factory=dict)
    baseline_reward: float | None = None  # ReMax greedy rollout reward, when the method asks for one
    trace: dict[str, str] = field(default_factory=dict)
    attempt: int = 0  # the prompt's PromptTask.attempt when it was sampled


@dataclass(frozen=True)
class RewardEndpointInfo:
    """A tenant's registered RewardService: where the rollout workers call it, how, and its deadline."""

    name: str
    address: str
    timeout_s: float = 0.0
    tls: bool = False
    """Call it over TLS (``grpc.secure_channel``)."""
    tls_ca: str = ""
    """PEM CA certificate(s) that signed the endpoint's certificate; empty: the system roots."""


@dataclass(frozen=True)
class AdapterManifest:
    run_id: str
    version: int
    step: int
    base_model: str
    method: str  # the preset name
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    group_ids: list[str] = field(
        default_factory=list
    )  # groups the step trained on (exactly-once bookkeeping)
    created_at: float = field(default_factory=time.time)
    resolved_method: ResolvedMethod | None = None  # the full method that trained this version
    promoted: bool = False
    eval: dict[str, float] = field(default_factory=dict)  # held-out evaluation (eval/...)
    parent: str = ""  # version 0's origin: "RUN@vN" (fork) or "upload:<sha256>"


@dataclass(frozen=True)
class RunEvent:
    run_id: str
    kind: EventKind
    message: str = ""
    step: int = 0
    version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    event_id: str = ""  # Redis stream id, filled on read
    samples: list[CompletionSample] = field(default_factory=list)


def to_json(obj: object) -> str:
    """Serialize a dataclass (nested dataclasses, enums, tuples) to JSON."""
    return json.dumps(dataclasses.asdict(obj), separators=(",", ":"))  # type: ignore[call-overload]


def _build(cls: type, data: Any) -> Any:
    if isinstance(cls, types.UnionType):  # ``X | None``: build the one non-None member
        members = [m for m in cls.__args__ if m is not type(None)]
        return None if data is None else _build(members[0], data) if len(members) == 1 else data
    if dataclasses.is_dataclass(cls) and isinstance(data, dict):
        hints = get_type_hints(cls)
        kwargs = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key in names:
                kwargs[key] = _build(hints[key], value)
        return cls(**kwargs)
    origin = getattr(cls, "__origin__", None)
    if origin is list and isinstance(data, list):
        (inner,) = cls.__args__  # type: ignore[attr-defined]
        return [_build(inner, v) for v in data]
    if origin is tuple and isinstance(data, list):
        return tuple(data)
    if isinstance(cls, type) and issubclass(cls, StrEnum):
        return cls(data)
    return data


def from_json(cls: type[T], text: str | bytes) -> T:
    """Inverse of ``to_json``; unknown keys are ignored so old readers accept new writers."""
    result: T = _build(cls, json.loads(text))
    return result


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    result: T = _build(cls, data)
    return result


__all__ = [
    "AdapterManifest",
    "CompletionSample",
    "EvalConfig",
    "EvalPrompt",
    "EventKind",
    "MethodChoice",
    "PromotionConfig",
    "PromptTask",
    "ResolvedMethod",
    "RetentionConfig",
    "RewardEndpointInfo",
    "Run",
    "RunConfig",
    "RunEvent",
    "RunStatus",
    "TeacherConfig",
    "Trajectory",
    "TrajectoryGroup",
    "from_dict",
    "from_json",
    "to_json",
]
