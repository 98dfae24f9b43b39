"""A request's ``google.protobuf.Struct`` as JSON: every value checked before it reaches the domain.

A NaN or infinite number, a value with nothing set, or a key longer than the field allows is
INVALID_ARGUMENT naming where it sits (``prompts[0].metadata["score"][2]``).
"""

from __future__ import annotations

import math

from google.protobuf import struct_pb2

from policyopt.client.structs import struct_to_dict
from policyopt.core.errors import InvalidArgument
from policyopt.core.identifiers import quote
from policyopt.core.types import JSONValue

MAX_STRUCT_KEY_CHARS = 4096


def _not_json_at(struct: struct_pb2.Struct, where: str, max_key: int) -> tuple[str, str] | None:
    """(place, problem) of the first value JSON cannot hold (a non-finite number, an unset value) or
    the first key longer than ``max_key`` characters."""
    pending: list[tuple[str, struct_pb2.Struct | struct_pb2.ListValue]] = [(where, struct)]
    while pending:  # a loop, not recursion: nesting depth is the caller's choice
        parent, container = pending.pop()
        if isinstance(container, struct_pb2.Struct):
            items = [(f"{parent}[{quote(k, 32)}]", k, v) for k, v in container.fields.items()]
        else:
            items = [(f"{parent}[{i}]", "", v) for i, v in enumerate(container.values)]
        for place, key, value in items:
            kind = value.WhichOneof("kind")
            if len(key) > max_key:
                return place, f"is a key of {len(key)} characters; keys here are at most {max_key}"
            if kind is None:
                return place, "has no value set (use null_value for null)"
            if kind == "number_value" and not math.isfinite(value.number_value):
                return place, f"is {value.number_value}; numbers must be finite"
            if kind == "struct_value":
                pending.append((place, value.struct_value))
            elif kind == "list_value":
                pending.append((place, value.list_value))
    return None


def struct_from_request(
    struct: struct_pb2.Struct, where: str, max_key: int = MAX_STRUCT_KEY_CHARS
) -> dict[str, JSONValue]:
    """A request's Struct as a dict; InvalidArgument names ``where`` (the field) and the bad value."""
    found = _not_json_at(struct, where, max_key)
    if found is not None:
        raise InvalidArgument(f"{found[0]} {found[1]}; Structs carry JSON values only")
    try:
        return struct_to_dict(struct)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where} is not JSON ({quote(str(exc))})") from exc


__all__ = ["MAX_STRUCT_KEY_CHARS", "struct_from_request"]
