"""Turn a ``MethodChoice`` (preset + per-axis overrides) into a validated ``MethodSpec``.

Override keys, per axis (values are JSON):

- ``"estimator": "gae"`` switches a slot's choice (its params reset to that choice's defaults);
- ``"estimator": {"name": "gae", "lam": 0.9}`` switches and sets params; without ``name`` it edits params;
- ``"estimator.lam": 0.9`` edits one param of the current choice;
- ``"shaping": ["overlong_penalty", {"name": "kl_penalty", "coef": 0.02}]`` replaces a list slot, and
  ``"shaping.kl_penalty.coef": 0.02`` edits one member;
- ``"entropy_coef": 0.001`` sets a plain field.

Every problem raises ``InvalidArgument`` with a message that says what to fix.

A resolved method is pinned into the run at CreateRun (``pin_method`` -> ``ResolvedMethod``, every field of
both axes) and rebuilt from that alone (``method_from_pinned``), so later edits to presets never reach a
run already created.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar, get_type_hints

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import quote
from policyopt.core.types import MethodChoice, ResolvedMethod, RunConfig
from policyopt.workers.algorithms.catalog import side_to_overrides
from policyopt.workers.algorithms.params import JSONValue, coerce_value, replace_params
from policyopt.workers.algorithms.presets import PRESETS
from policyopt.workers.algorithms.registry import ALL_REGISTRIES, Registry
from policyopt.workers.algorithms.spec import (
    TRAINER_PROVIDED,
    Choice,
    MethodSpec,
    RewardSide,
    TrajectorySide,
    iter_choices,
)

Side = TypeVar("Side", RewardSide, TrajectorySide)


def resolve_method(choice: MethodChoice) -> MethodSpec:
    """Preset + overrides on either axis -> a validated MethodSpec; InvalidArgument says what to fix."""
    if choice.preset not in PRESETS:
        raise InvalidArgument(
            f"unknown method preset {quote(choice.preset)}; known presets: {', '.join(sorted(PRESETS))}"
        )
    base = PRESETS[choice.preset].spec
    spec = MethodSpec(
        name=choice.preset,
        reward_side=apply_overrides(base.reward_side, choice.reward_side, "reward_side"),
        trajectory_side=apply_overrides(base.trajectory_side, choice.trajectory_side, "trajectory_side"),
    )
    validate_spec(spec)
    return spec


def override_method(spec: MethodSpec, reward_side: Mapping[str, JSONValue]) -> MethodSpec:
    """``spec`` with reward-side overrides applied and validated again (presets are not consulted)."""
    edited = dataclasses.replace(
        spec, reward_side=apply_overrides(spec.reward_side, reward_side, "reward_side")
    )
    validate_spec(edited)
    return edited


def _build_choice(registry: Registry[Any], value: JSONValue, current: Choice | None, where: str) -> Choice:
    """A Choice from ``"name"`` or ``{"name": ..., param: value}`` (no name: edit ``current``)."""
    if isinstance(value, str):
        return Choice(value, registry.get(value).params_type())
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"{where} must be a choice name or an object with 'name' and parameters; got {quote(value)}"
        )
    fields = dict(value)
    name = fields.pop("name", None)
    if name is None:
        if current is None:
            raise InvalidArgument(f"{where} needs a 'name'; known: {', '.join(registry.names())}")
        return Choice(current.name, replace_params(current.params, fields, where))
    if not isinstance(name, str):
        raise InvalidArgument(f"{where}.name must be a string; got {quote(name)}")
    params = replace_params(registry.get(name).params_type(), fields, f"{where}.{name}")
    return Choice(name, params)


def _known_keys(side: RewardSide | TrajectorySide) -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(side):
        keys.append(f.name)
        value = getattr(side, f.name)
        if "registry" not in f.metadata:
            continue
        for member in value if f.metadata.get("many") else (value,):
            prefix = f"{f.name}.{member.name}" if f.metadata.get("many") else f.name
            keys += [f"{prefix}.{p.name}" for p in dataclasses.fields(member.params)]
    return keys


def _with(side: Side, name: str, value: object) -> Side:
    """``side`` with one field, chosen at run time, replaced."""
    changes: dict[str, Any] = {name: value}
    return dataclasses.replace(side, **changes)


def _set_whole_field(side: Side, name: str, value: JSONValue, where: str) -> Side:
    f = {f.name: f for f in dataclasses.fields(side)}[name]
    registry = f.metadata.get("registry")
    if registry is None:
        return _with(side, name, coerce_value(value, get_type_hints(type(side))[name], where))
    if not f.metadata.get("many"):
        return _with(side, name, _build_choice(registry, value, getattr(side, name), where))
    members = value if isinstance(value, list) else [value]
    choices = tuple(_build_choice(registry, member, None, where) for member in members)
    return _with(side, name, choices)


def _set_param(side: Side, key: str, value: JSONValue, where: str) -> Side:
    """Apply a dotted key: ``slot.param`` or ``list_slot.member.param``."""
    head, _, rest = key.partition(".")
    f = {f.name: f for f in dataclasses.fields(side)}.get(head)
    if f is None or "registry" not in f.metadata:
        raise InvalidArgument(f"unknown field {where}; known fields: {', '.join(_known_keys(side))}")
    if not f.metadata.get("many"):
        current = getattr(side, head)
        updated = Choice(
            current.name, replace_params(current.params, {rest: value}, f"{where.split('.')[0]}.{head}")
        )
        return _with(side, head, updated)
    member_name, _, param_name = rest.partition(".")
    members = list(getattr(side, head))
    index = next((i for i, m in enumerate(members) if m.name == member_name), None)
    if index is None or not param_name:
        included = ", ".join(m.name for m in members) or "none"
        raise InvalidArgument(
            f"{where}: {quote(member_name)} is not in {head} (included: {included}); set {head} first"
        )
    member = members[index]
    members[index] = Choice(
        member.name, replace_params(member.params, {param_name: value}, f"{head}.{member.name}")
    )
    return _with(side, head, tuple(members))


def apply_overrides(side: Side, overrides: Mapping[str, JSONValue], axis: str) -> Side:
    """Apply JSON overrides to one axis (whole fields first, then dotted params)."""
    field_names = {f.name for f in dataclasses.fields(side)}
    for key in sorted(overrides, key=lambda k: ("." in k, k)):
        where = f"{axis}.{key}"
        if "." in key:
            side = _set_param(side, key, overrides[key], where)
        elif key in field_names:
            side = _set_whole_field(side, key, overrides[key], where)
        else:
            raise InvalidArgument(f"unknown field {where}; known fields: {', '.join(_known_keys(side))}")
    return side


def _providers(need: str) -> list[str]:
    return [f"{r.path} to {e.name!r}" for r in ALL_REGISTRIES for e in r.entries() if need in e.provides]


def _dependency_problems(spec: MethodSpec) -> list[str]:
    problems: list[str] = []
    needs, provides = spec.needs, spec.provides
    for path, entry, choice in spec.entries():
        for need in sorted((entry.needs | choice.params.needs()) - TRAINER_PROVIDED - provides):
            fix = " or ".join(_providers(need)) or "a choice that provides it"
            problems.append(f"{path} {choice.name!r} needs {need}, which nothing provides: set {fix}")
        for extra in sorted(entry.provides - needs):
            problems.append(
                f"{path} {choice.name!r} provides {extra} that no choice uses: set it to 'none', "
                f"or pick a choice that needs {extra} (e.g. reward_side.estimator 'gae')"
            )
    return problems


def validate_spec(spec: MethodSpec) -> None:
    """Raise InvalidArgument listing every problem of the combination."""
    problems: list[str] = []
    for side in (spec.reward_side, spec.trajectory_side):
        for _, registry, choice in iter_choices(side):
            entry = registry.get(choice.name)
            if not isinstance(choice.params, entry.params_type):
                problems.append(f"{registry.path} {choice.name!r} has params of the wrong type")
                continue
            problems += [f"{registry.path}.{choice.name}: {p}" for p in choice.params.validate()]
    problems += [f"trajectory_side: {p}" for p in spec.trajectory_side.validate()]
    shaping_names = [c.name for c in spec.reward_side.shaping]
    if len(set(shaping_names)) != len(shaping_names):
        problems.append("reward_side.shaping lists a term twice; list each term once")
    problems += _dependency_problems(spec)
    if problems:
        raise InvalidArgument(f"invalid method (preset {spec.name!r}): " + "; ".join(problems))


def pin_method(spec: MethodSpec) -> ResolvedMethod:
    """Every field of both axes of ``spec`` as JSON; ``method_from_pinned`` rebuilds ``spec`` from it."""

    def as_json(side: RewardSide | TrajectorySide) -> dict[str, JSONValue]:
        plain: dict[str, JSONValue] = json.loads(json.dumps(side_to_overrides(side)))
        return plain

    return ResolvedMethod(spec.name, as_json(spec.reward_side), as_json(spec.trajectory_side))


def _side_from_pinned(side_type: type[Side], data: Mapping[str, JSONValue], axis: str) -> Side:
    fields = {f.name: f for f in dataclasses.fields(side_type)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(f"the pinned method has an unknown field {axis}.{unknown[0]}")
    hints = get_type_hints(side_type)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{axis}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING:
                raise InvalidArgument(f"the pinned method lacks {where}")
            continue  # a field added after the run was pinned takes its default
        registry, value = f.metadata.get("registry"), data[name]
        if registry is None:
            values[name] = coerce_value(value, hints[name], where)
        elif f.metadata.get("many"):
            members = value if isinstance(value, list) else [value]
            values[name] = tuple(_build_choice(registry, member, None, where) for member in members)
        else:
            values[name] = _build_choice(registry, value, None, where)
    return side_type(**values)


def method_from_pinned(method: ResolvedMethod) -> MethodSpec:
    """The method a run was pinned to, rebuilt from its JSON alone (presets are not consulted)."""
    spec = MethodSpec(
        name=method.preset,
        reward_side=_side_from_pinned(RewardSide, method.reward_side, "reward_side"),
        trajectory_side=_side_from_pinned(TrajectorySide, method.trajectory_side, "trajectory_side"),
    )
    validate_spec(spec)
    return spec


def run_method(config: RunConfig) -> MethodSpec:
    """The method a run trains with: its pinned method (runs created before pinning: its choice, resolved)."""
    if config.resolved_method is not None:
        return method_from_pinned(config.resolved_method)
    return resolve_method(config.method)
