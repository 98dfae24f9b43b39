"""Protobuf <-> SDK dataclasses, and request builders shared by Client and AsyncClient."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from google.protobuf import json_format, struct_pb2

from policyopt.client.errors import InvalidArgument
from policyopt.client.types import (
    AdapterVersion,
    EventKind,
    JSONValue,
    MethodCatalog,
    MethodChoiceInfo,
    MethodParameter,
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
    "max_steps", "max_staleness", "engine", "seed",
)  # fmt: skip


def _plain(value: JSONValue) -> JSONValue:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, JSONValue]:
    result: dict[str, JSONValue] = _plain(json_format.MessageToDict(struct))  # type: ignore[assignment]
    return result


def dict_to_struct(data: Mapping[str, JSONValue] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        try:
            struct.update(dict(data))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"metadata must be JSON-like (str, number, bool, None, list, dict): {exc}"
            ) from exc
    return struct


def create_run_request(
    base_model: str,
    method: str,
    reward_endpoint: str,
    reward_side: Mapping[str, JSONValue] | None,
    trajectory_side: Mapping[str, JSONValue] | None,
    options: RunOptions,
) -> pb.CreateRunRequest:
    unknown = set(options) - set(RunOptions.__annotations__)
    if unknown:
        raise TypeError(
            f"create_run() got unknown options {sorted(unknown)}; known: {sorted(RunOptions.__annotations__)}"
        )
    request = pb.CreateRunRequest(
        base_model=base_model,
        reward_endpoint=reward_endpoint,
        method=pb.MethodSpec(
            preset=method,
            reward_side=dict_to_struct(reward_side),
            trajectory_side=dict_to_struct(trajectory_side),
        ),
    )
    for name in _TOP_LEVEL_OPTIONS:
        if name in options:
            setattr(request, name, options[name])  # type: ignore[literal-required]
    for name in ("rank", "alpha", "dropout"):
        if f"lora_{name}" in options:
            setattr(request.lora, name, options[f"lora_{name}"])  # type: ignore[literal-required]
    request.lora.target_modules.extend(options.get("lora_target_modules", []))
    request.teacher.model = options.get("teacher_model", "")
    request.teacher.endpoint = options.get("teacher_endpoint", "")
    request.teacher.coef = options.get("teacher_coef", 0.0)
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
            pb.Prompt(text=text, metadata=dict_to_struct(meta))
            for text, meta in zip(prompts, metas, strict=True)
        ],
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
    )


def endpoint_from_proto(endpoint: pb.RewardEndpoint) -> RewardEndpoint:
    return RewardEndpoint(name=endpoint.name, address=endpoint.address, timeout_s=endpoint.timeout_s)


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
    """PullAdapter's version field: "latest" or a positive number."""
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 1:
            raise InvalidArgument(f"adapter versions start at 1, got {version}")
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
                metadata=dict_to_struct(metadata),
            )
        )
    return pb.SubmitTrajectoriesRequest(run_id=run_id, groups=messages)
