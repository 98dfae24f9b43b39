"""Protobuf <-> ``policyopt.core.types``. The only server module that builds or reads messages' fields.

Unset optional request fields take the ``RunConfig`` defaults. ``google.protobuf.Struct`` numbers are
doubles; integral ones come back as ``int`` so ``{"answer": 5}`` survives the round trip. A request's
Structs must hold JSON (``request_structs.struct_from_request``). Evaluation, promotion and retention
settings and eval prompts have their own module, ``convert_eval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from policyopt.client.structs import dict_to_struct
from policyopt.core.errors import InvalidArgument
from policyopt.core.types import (
    AdapterManifest,
    EventKind,
    JSONValue,
    MethodChoice,
    ResolvedMethod,
    RewardEndpointInfo,
    Run,
    RunConfig,
    RunEvent,
    RunStatus,
    TeacherConfig,
    Trajectory,
    TrajectoryGroup,
)
from policyopt.server.convert_eval import (
    eval_config_from_request,
    promotion_config_from_proto,
    retention_config_from_proto,
)
from policyopt.server.request_structs import struct_from_request
from policyopt.v1 import policyopt_pb2 as pb

_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.name != "base_model"}
MAX_METHOD_KEY_CHARS = 128  # method fields are short names; the library echoes a key it does not know
_OPTIONAL_FIELDS = (
    "group_size", "prompts_per_step", "max_new_tokens", "temperature", "top_p",
    "learning_rate", "max_steps", "max_staleness", "seed",
)  # fmt: skip


def method_from_proto(spec: pb.MethodSpec) -> MethodChoice:
    return MethodChoice(
        preset=spec.preset or MethodChoice.preset,
        reward_side=struct_from_request(spec.reward_side, "method.reward_side", MAX_METHOD_KEY_CHARS),
        trajectory_side=struct_from_request(
            spec.trajectory_side, "method.trajectory_side", MAX_METHOD_KEY_CHARS
        ),
    )


def method_to_proto(method: MethodChoice | ResolvedMethod) -> pb.MethodSpec:
    return pb.MethodSpec(
        preset=method.preset,
        reward_side=dict_to_struct(method.reward_side),
        trajectory_side=dict_to_struct(method.trajectory_side),
    )


def _resolved_to_proto(method: ResolvedMethod | None) -> pb.MethodSpec | None:
    """The pinned method; unset for runs recorded before methods were pinned."""
    return method_to_proto(method) if method is not None else None


def run_config_from_request(request: pb.CreateRunRequest) -> RunConfig:
    """The run's configuration; fields the caller left unset take the defaults."""
    values: dict[str, object] = {n: getattr(request, n) for n in _OPTIONAL_FIELDS if request.HasField(n)}
    if request.HasField("sample_every"):
        values["sample_every"] = request.sample_every
    if request.correctness_component:
        values["correctness_component"] = request.correctness_component
    lora = request.lora
    for name in ("rank", "alpha", "dropout"):
        if lora.HasField(name):
            values[f"lora_{name}"] = getattr(lora, name)
    if lora.target_modules:
        values["lora_target_modules"] = tuple(lora.target_modules)
    teacher = TeacherConfig(
        model=request.teacher.model, endpoint=request.teacher.endpoint, coef=request.teacher.coef
    )
    return RunConfig(
        base_model=request.base_model,
        reward_endpoint=request.reward_endpoint,
        method=method_from_proto(request.method),
        engine=request.engine or str(_DEFAULTS["engine"]),
        teacher=teacher,
        eval=eval_config_from_request(request),
        promotion=promotion_config_from_proto(request.promotion),
        retention=retention_config_from_proto(request.retention),
        init_adapter=request.init_adapter,
        **values,  # type: ignore[arg-type]
    )


M = TypeVar("M", bound=Message)


def _message(cls: type[M], *sources: object, **given: object) -> M:
    """A ``cls`` message: the fields in ``given`` as given, every other field copied from the first source
    with an attribute of the same name (the domain records use the contract's field names)."""
    values = dict(given)
    for field in cls.DESCRIPTOR.fields:
        if field.name not in values:
            source = next((s for s in sources if hasattr(s, field.name)), None)
            if source is not None:
                values[field.name] = getattr(source, field.name)
    return cls(**values)


def run_to_proto(run: Run) -> pb.Run:
    config = run.config
    lora = pb.LoraSpec(
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
    )
    return _message(
        pb.Run,
        run,
        config,
        status=f"RUN_STATUS_{run.status.name}",
        method=method_to_proto(config.method),
        lora=lora,
        teacher=_message(pb.TeacherSpec, config.teacher),
        resolved_method=_resolved_to_proto(config.resolved_method),
        eval=_message(pb.EvalSpec, config.eval),
        promotion=_message(pb.PromotionSpec, config.promotion),
        retention=_message(pb.RetentionSpec, config.retention),
    )


def run_status_from_proto(value: int) -> RunStatus:
    return RunStatus[pb.RunStatus.Name(value).removeprefix("RUN_STATUS_")]


def event_to_proto(event: RunEvent) -> pb.RunEvent:
    return _message(
        pb.RunEvent,
        event,
        kind=f"EVENT_KIND_{EventKind(event.kind).name}",
        samples=[_message(pb.CompletionSample, sample) for sample in event.samples],
    )


def manifest_to_proto(manifest: AdapterManifest) -> pb.AdapterVersion:
    return _message(pb.AdapterVersion, manifest, resolved_method=_resolved_to_proto(manifest.resolved_method))


def endpoint_to_proto(endpoint: RewardEndpointInfo) -> pb.RewardEndpoint:
    return _message(pb.RewardEndpoint, endpoint)


MAX_ENDPOINT_CA_BYTES = 64 << 10


def endpoint_ca_from_request(request: pb.RegisterRewardEndpointRequest) -> str:
    """The endpoint's PEM CA, checked for shape: the workers verify the endpoint's certificate with it."""
    ca = request.tls_ca
    if not ca:
        return ""
    if not request.tls:
        raise InvalidArgument("tls_ca is set but tls is false; set tls=true to call the endpoint over TLS")
    if len(ca.encode()) > MAX_ENDPOINT_CA_BYTES:
        raise InvalidArgument(
            f"tls_ca is larger than {MAX_ENDPOINT_CA_BYTES} bytes; send the CA certificate only"
        )
    if "-----BEGIN CERTIFICATE-----" not in ca:
        raise InvalidArgument("tls_ca must be PEM text (-----BEGIN CERTIFICATE-----), not a path or DER")
    return ca


def prompts_from_request(request: pb.SubmitPromptsRequest) -> list[tuple[str, dict[str, JSONValue]]]:
    """(text, metadata) of each submitted prompt."""
    return [
        (p.text, struct_from_request(p.metadata, f"prompts[{i}].metadata"))
        for i, p in enumerate(request.prompts)
    ]


# -- ListMethods: what ``policyopt.workers.algorithms.list_methods()`` returns, structurally ------------------
class MethodParameterLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def default(self) -> object: ...
    @property
    def doc(self) -> str: ...


class MethodChoiceLike(Protocol):
    @property
    def axis(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def rationale(self) -> str: ...
    @property
    def parameters(self) -> Sequence[MethodParameterLike]: ...


class PresetLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def reward_side(self) -> Mapping[str, JSONValue]: ...
    @property
    def trajectory_side(self) -> Mapping[str, JSONValue]: ...


MethodCatalog = tuple[Sequence[MethodChoiceLike], Sequence[PresetLike]]


def methods_to_proto(catalog: MethodCatalog) -> pb.ListMethodsResponse:
    """``(choices, presets)`` as ``list_methods()`` returns them -> ListMethodsResponse."""
    choice_infos, preset_infos = catalog
    choices = [
        pb.MethodChoiceInfo(
            axis=c.axis,
            name=c.name,
            rationale=c.rationale,
            parameters=[
                pb.MethodParameter(name=p.name, type=str(p.type), default=str(p.default), doc=p.doc)
                for p in c.parameters
            ],
        )
        for c in choice_infos
    ]
    presets = [
        pb.PresetInfo(
            name=p.name,
            description=p.description,
            reward_side=dict_to_struct(p.reward_side),
            trajectory_side=dict_to_struct(p.trajectory_side),
        )
        for p in preset_infos
    ]
    return pb.ListMethodsResponse(choices=choices, presets=presets)


# -- SubmitTrajectories: client-driven (agentic) trajectories ----------------------------------------------
@dataclass(frozen=True)
class TurnInput:
    """One submitted turn; ``role`` is ``model`` or ``environment`` ("" when the caller left it unset)."""

    role: str
    token_ids: list[int]
    logprobs: list[float]
    adapter_version: int
    reward: float | None


@dataclass(frozen=True)
class TrajectoryInput:
    prompt_ids: list[int]
    turns: list[TurnInput]
    reward: float


@dataclass(frozen=True)
class GroupInput:
    trajectories: list[TrajectoryInput]
    metadata: dict[str, JSONValue]


_ROLES = {pb.TURN_ROLE_MODEL: "model", pb.TURN_ROLE_ENVIRONMENT: "environment"}


def trajectory_groups_from_request(request: pb.SubmitTrajectoriesRequest) -> list[GroupInput]:
    """The submitted groups as plain values (validated separately, see ``validation``)."""
    return [
        GroupInput(
            trajectories=[
                TrajectoryInput(
                    prompt_ids=list(t.prompt_ids),
                    turns=[
                        TurnInput(
                            role=_ROLES.get(turn.role, ""),
                            token_ids=list(turn.token_ids),
                            logprobs=list(turn.logprobs),
                            adapter_version=turn.adapter_version,
                            reward=turn.reward if turn.HasField("reward") else None,
                        )
                        for turn in t.turns
                    ],
                    reward=t.reward,
                )
                for t in group.trajectories
            ],
            metadata=struct_from_request(group.metadata, f"groups[{g}].metadata"),
        )
        for g, group in enumerate(request.groups)
    ]


def shared_prompt_length(group: GroupInput) -> int:
    """Length of the longest prefix of prompt ids every trajectory of the group shares."""
    prompts = [t.prompt_ids for t in group.trajectories]
    shortest = min((len(p) for p in prompts), default=0)
    for i in range(shortest):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return shortest


def _trajectory_from_input(trajectory: TrajectoryInput, shared: int) -> Trajectory:
    """Completion = prompt tokens past the group's shared prefix, then every turn, concatenated.

    ``loss_mask`` is 1 on model tokens only; ``sampler_logprobs`` holds 0.0 at environment positions;
    ``version`` is the oldest adapter version of its model turns.
    """
    ids = list(trajectory.prompt_ids[shared:])
    mask, logprobs = [0] * len(ids), [0.0] * len(ids)
    turn_ends: list[int] = []
    turn_rewards: list[float] = []
    for turn in trajectory.turns:
        ids += turn.token_ids
        model = turn.role == "model"
        mask += [int(model)] * len(turn.token_ids)
        logprobs += turn.logprobs if model else [0.0] * len(turn.token_ids)
        if model:
            turn_ends.append(len(ids))
            turn_rewards.append(turn.reward or 0.0)
    versions = [t.adapter_version for t in trajectory.turns if t.role == "model"]
    return Trajectory(
        completion_ids=ids,
        sampler_logprobs=logprobs,
        reward=trajectory.reward,
        finish_reason="stop",
        loss_mask=mask,
        version=min(versions, default=0),
        turn_ends=turn_ends,
        turn_rewards=turn_rewards,
    )


def trajectory_group_from_input(
    run_id: str, group_id: str, group: GroupInput, trace: dict[str, str]
) -> TrajectoryGroup:
    """A validated group as the trainer reads it; token ids pass through untouched (never re-tokenized)."""
    shared = shared_prompt_length(group)
    trajectories = [_trajectory_from_input(t, shared) for t in group.trajectories]
    return TrajectoryGroup(
        run_id=run_id,
        group_id=group_id,
        prompt_id=group_id,
        prompt="",
        prompt_ids=list(group.trajectories[0].prompt_ids[:shared]),
        trajectories=trajectories,
        adapter_version=min(t.version for t in trajectories),
        metadata=group.metadata,
        trace=trace,
    )


def fold_teacher_coef(config: RunConfig) -> RunConfig:
    """The run's ``teacher.coef`` (lambda), when set, becomes the method's ``reward_side.estimator.coef``."""
    coef = config.teacher.coef
    if coef <= 0:
        return config
    overrides = dict(config.method.reward_side)
    given = overrides.get("estimator.coef")
    if given is not None and given != coef:
        raise InvalidArgument(
            f"teacher.coef={coef} and reward_side estimator.coef={given} disagree; set lambda once"
        )
    overrides["estimator.coef"] = coef
    return replace(config, method=replace(config.method, reward_side=overrides))
