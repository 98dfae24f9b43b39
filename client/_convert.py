"""Protobuf <-> SDK dataclasses, and request builders shared by Client and AsyncClient."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf import struct_pb2

from policyopt.client import _evaluation
from policyopt.client.errors import InvalidArgument
from policyopt.client.structs import dict_to_struct, struct_to_dict
from policyopt.client.types import (
    AdapterVersion,
    CompletionSample,
    CreateRunOptions,
    EventKind,
    JSONValue,
    MethodCatalog,
    MethodChoiceInfo,
    MethodParameter,
    MethodSettings,
    PresetInfo,
    RewardEndpoint,
    RunEvent,
    RunInfo,
    RunOptions,
    RunStatus,
    Trajectory,
    TrajectoryGroup,
    Turn,
    TurnRole,
)
from policyopt.v1 import policyopt_pb2 as pb

_TOP_LEVEL_OPTIONS = (
    "group_size", "prompts_per_step", "max_new_tokens", "temperature", "top_p", "learning_rate",
    "max_steps", "max_staleness", "engine", "seed", "correctness_component", "sample_every",
)  # fmt: skip
_LORA_OPTIONS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}


def _struct(data: Mapping[str, JSONValue] | None) -> struct_pb2.Struct:
    try:
        return dict_to_struct(data)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"metadata must be JSON-like (str, number, bool, None, list, dict): {exc}"
        ) from exc


def method_to_proto(
    preset: str, reward_side: Mapping[str, JSONValue] | None, trajectory_side: Mapping[str, JSONValue] | None
) -> pb.MethodSpec:
    return pb.MethodSpec(
        preset=preset, reward_side=_struct(reward_side), trajectory_side=_struct(trajectory_side)
    )


_METHOD_OPTIONS = ("method", "reward_endpoint", "reward_side", "trajectory_side")


def create_run_request(base_model: str, options: CreateRunOptions) -> pb.CreateRunRequest:
    known = set(RunOptions.__annotations__) | set(_METHOD_OPTIONS) | _evaluation.EVAL_OPTIONS
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"create_run() got unknown options {sorted(unknown)}; known: {sorted(known)}")
    method = method_to_proto(
        options.get("method", "grpo"), options.get("reward_side"), options.get("trajectory_side")
    )
    request = pb.CreateRunRequest(
        base_model=base_model, reward_endpoint=options.get("reward_endpoint", ""), method=method
    )
    for name, value in options.items():
        if name in _TOP_LEVEL_OPTIONS:
            setattr(request, name, value)
        elif name in _LORA_OPTIONS:
            setattr(request.lora, _LORA_OPTIONS[name], value)
    request.lora.target_modules.extend(options.get("lora_target_modules", []))
    request.teacher.model = options.get("teacher_model", "")
    request.teacher.endpoint = options.get("teacher_endpoint", "")
    request.teacher.coef = options.get("teacher_coef", 0.0)
    _evaluation.apply_eval_options(request, options)
    return request


def submit_prompts_request(
    run_id: str, prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None
) -> pb.SubmitPromptsRequest:
    if isinstance(prompts, str):
        raise InvalidArgument("prompts must be a list of strings, not one string")
    if metadata is not None and len(metadata) != len(prompts):
        raise InvalidArgument(
            f"metadata has {len(metadata)} entries for {len(prompts)} prompts; give one per prompt"
        )
    metas = metadata if metadata is not None else [{}] * len(prompts)
    return pb.SubmitPromptsRequest(
        run_id=run_id,
        prompts=[
            pb.Prompt(text=text, metadata=_struct(meta)) for text, meta in zip(prompts, metas, strict=True)
        ],
    )


def method_settings_from_proto(spec: pb.MethodSpec) -> MethodSettings:
    return MethodSettings(
        preset=spec.preset,
        reward_side=struct_to_dict(spec.reward_side),
        trajectory_side=struct_to_dict(spec.trajectory_side),
    )


def run_from_proto(run: pb.Run) -> RunInfo:
    return RunInfo(
        run_id=run.run_id,
        status=RunStatus[pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_")],
        base_model=run.base_model,
        method=run.method.preset,
        reward_side=struct_to_dict(run.method.reward_side),
        trajectory_side=struct_to_dict(run.method.trajectory_side),
        reward_endpoint=run.reward_endpoint,
        group_size=run.group_size,
        prompts_per_step=run.prompts_per_step,
        max_new_tokens=run.max_new_tokens,
        temperature=run.temperature,
        top_p=run.top_p,
        learning_rate=run.learning_rate,
        lora_rank=run.lora.rank,
        lora_alpha=run.lora.alpha,
        lora_dropout=run.lora.dropout,
        lora_target_modules=tuple(run.lora.target_modules),
        max_steps=run.max_steps,
        max_staleness=run.max_staleness,
        engine=run.engine,
        seed=run.seed,
        version=run.version,
        step=run.step,
        prompts_submitted=run.prompts_submitted,
        groups_trained=run.groups_trained,
        created_at=run.created_at,
        error=run.error,
        resolved_method=method_settings_from_proto(run.resolved_method),
        init_adapter=run.init_adapter,
        eval_prompt_count=run.eval_prompt_count,
        promoted_version=run.promoted_version,
        correctness_component=run.correctness_component,
        sample_every=run.sample_every,
    )


def event_from_proto(event: pb.RunEvent) -> RunEvent:
    return RunEvent(
        event_id=event.event_id,
        run_id=event.run_id,
        kind=EventKind[pb.EventKind.Name(event.kind).removeprefix("EVENT_KIND_")],
        message=event.message,
        step=event.step,
        version=event.version,
        metrics=dict(event.metrics),
        timestamp=event.timestamp,
        samples=tuple(
            CompletionSample(s.prompt, s.completion, s.reward, dict(s.components)) for s in event.samples
        ),
    )


def version_from_proto(version: pb.AdapterVersion) -> AdapterVersion:
    return AdapterVersion(
        run_id=version.run_id,
        version=version.version,
        step=version.step,
        base_model=version.base_model,
        method=version.method,
        metrics=dict(version.metrics),
        files=dict(version.files),
        created_at=version.created_at,
        resolved_method=(
            method_settings_from_proto(version.resolved_method)
            if version.HasField("resolved_method")
            else None
        ),
        promoted=version.promoted,
        eval=dict(version.eval),
        parent=version.parent,
    )


def endpoint_from_proto(endpoint: pb.RewardEndpoint) -> RewardEndpoint:
    return RewardEndpoint(
        name=endpoint.name,
        address=endpoint.address,
        timeout_s=endpoint.timeout_s,
        tls=endpoint.tls,
        tls_ca=endpoint.tls_ca,
    )


def methods_from_proto(response: pb.ListMethodsResponse) -> MethodCatalog:
    choices = tuple(
        MethodChoiceInfo(
            axis=c.axis,
            name=c.name,
            rationale=c.rationale,
            parameters=tuple(MethodParameter(p.name, p.type, p.default, p.doc) for p in c.parameters),
        )
        for c in response.choices
    )
    presets = tuple(
        PresetInfo(p.name, p.description, struct_to_dict(p.reward_side), struct_to_dict(p.trajectory_side))
        for p in response.presets
    )
    return MethodCatalog(choices=choices, presets=presets)


def version_text(version: int | str) -> str:
    """PullAdapter's version field: "latest" or a number (0: a warm-started or forked run's first adapter)."""
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 0:
            raise InvalidArgument(f"adapter versions start at 0, got {version}")
        return str(version)
    return str(version)


_TURN_ROLES = {TurnRole.MODEL: pb.TURN_ROLE_MODEL, TurnRole.ENVIRONMENT: pb.TURN_ROLE_ENVIRONMENT}
GroupLike = TrajectoryGroup | Sequence[Trajectory]


def _turn_to_proto(turn: Turn) -> pb.Turn:
    if not isinstance(turn, Turn):
        raise InvalidArgument(f"turns must be policyopt.client.Turn, got {type(turn).__name__}")
    message = pb.Turn(
        role=_TURN_ROLES[TurnRole(turn.role)],
        token_ids=list(turn.token_ids),
        logprobs=list(turn.logprobs),
        adapter_version=turn.adapter_version,
    )
    if turn.reward is not None:
        message.reward = turn.reward
    return message


def submit_trajectories_request(run_id: str, groups: Sequence[GroupLike]) -> pb.SubmitTrajectoriesRequest:
    """Groups of ``Trajectory`` (a ``TrajectoryGroup`` or a plain list) -> SubmitTrajectoriesRequest."""
    messages = []
    for group in groups:
        if isinstance(group, Trajectory):
            raise InvalidArgument(
                "groups must be lists of trajectories (or TrajectoryGroup), not one Trajectory"
            )
        members = group.trajectories if isinstance(group, TrajectoryGroup) else list(group)
        metadata = group.metadata if isinstance(group, TrajectoryGroup) else {}
        messages.append(
            pb.TrajectoryGroupInput(
                trajectories=[
                    pb.Trajectory(
                        prompt_ids=list(t.prompt_ids),
                        turns=[_turn_to_proto(turn) for turn in t.turns],
                        reward=t.reward,
                    )
                    for t in members
                ],
                metadata=_struct(metadata),
            )
        )
    return pb.SubmitTrajectoriesRequest(run_id=run_id, groups=messages)
