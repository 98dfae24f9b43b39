"""``google.protobuf.Struct`` <-> plain JSON-like dicts, one copy for the client and the server.

A Struct holds every number as a double, so integral numbers come back as ``int``. Protobuf only: a
value JSON cannot hold raises the protobuf's own ``TypeError`` or ``ValueError``, which callers turn into
their own errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from google.protobuf import json_format, struct_pb2

from policyopt.client.types import JSONValue


def _plain(value: JSONValue) -> JSONValue:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, JSONValue]:
    """The Struct as a dict, integral numbers as ``int`` (at any depth)."""
    return {key: _plain(value) for key, value in json_format.MessageToDict(struct).items()}


def dict_to_struct(data: Mapping[str, JSONValue] | None) -> struct_pb2.Struct:
    """A Struct holding ``data`` (empty for None); TypeError or ValueError if a value is not JSON-like."""
    struct = struct_pb2.Struct()
    if data:
        struct.update(dict(data))
    return struct


__all__ = ["dict_to_struct", "struct_to_dict"]
