"""Small frozen parameter dataclasses for method choices.

Each choice in a registry names one ``Params`` subclass. Fields are declared with :func:`param` so the doc
(the reason to change the field) lives next to the default, and ``ListMethods`` shows both. Overrides arrive
as JSON (protobuf ``Struct`` numbers are doubles), so :func:`replace_params` coerces and checks them.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import quote

JSONValue = Any  # a value decoded from JSON or a protobuf Struct
P = TypeVar("P", bound="Params")


@dataclass(frozen=True)
class Params:
    """Base of every params dataclass: no fields, no problems, no needs."""

    def validate(self) -> list[str]:
        """Problems with these values, each phrased as what to fix; empty when valid."""
        return []

    def needs(self) -> frozenset[str]:
        """Inputs these values add to the choice's static needs (e.g. ``reference`` when a coef > 0)."""
        return frozenset()


@dataclass(frozen=True)
class NoParams(Params):
    """For choices without parameters."""


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a choice, as ``ListMethods`` shows it."""

    name: str
    type: str
    default: str
    doc: str


def param(default: Any, doc: str) -> Any:
    """Declare a params field with its default and its doc (why you would change it)."""
    return field(default=default, metadata={"doc": doc})


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(hint))
    if get_origin(hint) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))


def describe_params(cls: type[Params]) -> list[ParameterInfo]:
    """Name, type, default and doc of every field of ``cls``."""
    hints = get_type_hints(cls)
    return [
        ParameterInfo(f.name, _type_name(hints[f.name]), repr(f.default), str(f.metadata.get("doc", "")))
        for f in dataclasses.fields(cls)
    ]


def coerce_value(value: JSONValue, hint: Any, where: str) -> Any:
    """Convert one JSON value to the field's type, or raise InvalidArgument saying what was expected."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        inner = [a for a in get_args(hint) if a is not type(None)]
        return coerce_value(value, inner[0], where)
    if origin is Literal:
        if value not in get_args(hint):
            raise InvalidArgument(f"{where} must be {_type_name(hint)}; got {quote(value)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str and isinstance(value, str):
        return value
    raise InvalidArgument(f"{where} must be {_type_name(hint)}; got {quote(value)}")


def replace_params(params: P, updates: Mapping[str, JSONValue], where: str) -> P:
    """Return ``params`` with ``updates`` applied; unknown names and wrong types raise InvalidArgument."""
    cls = type(params)
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    changes: dict[str, Any] = {}
    for name, value in updates.items():
        if name not in hints or name not in known:
            listing = ", ".join(known) if known else "none (this choice takes no parameters)"
            raise InvalidArgument(f"unknown parameter {where}.{name}; known parameters: {listing}")
        changes[name] = coerce_value(value, hints[name], f"{where}.{name}")
    return dataclasses.replace(params, **changes)


def params_to_dict(params: Params) -> dict[str, JSONValue]:
    """Field name -> value, JSON-ready."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
