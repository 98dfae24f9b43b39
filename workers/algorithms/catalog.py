"""What ``ListMethods`` and ``policyopt methods`` show: every choice on each axis, and the presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import get_type_hints

from policyopt.workers.algorithms.params import JSONValue, ParameterInfo, describe_params, params_to_dict
from policyopt.workers.algorithms.presets import PRESETS
from policyopt.workers.algorithms.registry import ALL_REGISTRIES
from policyopt.workers.algorithms.spec import Choice, RewardSide, TrajectorySide


@dataclass(frozen=True)
class ChoiceInfo:
    """One choice: ``axis`` is ``reward_side.<slot>`` or ``trajectory_side.<slot>``."""

    axis: str
    name: str
    rationale: str
    parameters: list[ParameterInfo]


@dataclass(frozen=True)
class PresetInfo:
    """A preset, with both axes in the override form ``resolve_method`` accepts."""

    name: str
    description: str
    reward_side: dict[str, JSONValue]
    trajectory_side: dict[str, JSONValue]


def _settings_info(side_type: type[RewardSide] | type[TrajectorySide], axis: str) -> list[ChoiceInfo]:
    hints = get_type_hints(side_type)
    parameters = [
        ParameterInfo(
            f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), repr(f.default), f.metadata["doc"]
        )
        for f in dataclasses.fields(side_type)
        if "doc" in f.metadata
    ]
    if not parameters:
        return []
    return [ChoiceInfo(f"{axis}.settings", "settings", f"Plain fields of the {axis} axis.", parameters)]


def _choice_to_json(choice: Choice) -> dict[str, JSONValue]:
    return {"name": choice.name, **params_to_dict(choice.params)}


def side_to_overrides(side: RewardSide | TrajectorySide) -> dict[str, JSONValue]:
    """An axis as override JSON: resolving it on any preset reproduces ``side`` exactly."""
    result: dict[str, JSONValue] = {}
    for f in dataclasses.fields(side):
        value = getattr(side, f.name)
        if f.metadata.get("many"):
            result[f.name] = [_choice_to_json(c) for c in value]
        elif "registry" in f.metadata:
            result[f.name] = _choice_to_json(value)
        else:
            result[f.name] = value
    return result


def list_methods() -> tuple[list[ChoiceInfo], list[PresetInfo]]:
    """Every registered choice (axis, name, rationale, parameters) and every preset."""
    choices = [
        ChoiceInfo(registry.path, entry.name, entry.rationale, describe_params(entry.params_type))
        for registry in ALL_REGISTRIES
        for entry in registry.entries()
    ]
    choices += _settings_info(RewardSide, "reward_side") + _settings_info(TrajectorySide, "trajectory_side")
    presets = [
        PresetInfo(
            p.name,
            p.description,
            side_to_overrides(p.spec.reward_side),
            side_to_overrides(p.spec.trajectory_side),
        )
        for p in PRESETS.values()
    ]
    return choices, presets
