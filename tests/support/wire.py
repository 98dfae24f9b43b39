"""Protobuf wire bytes built by hand, for requests the protobuf library refuses to build."""

from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_create_run(depth: int) -> bytes:
    """A CreateRunRequest whose method.reward_side nests ``depth`` Structs (protobuf parses at most 100)."""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + varint(len(inner)) + inner  # Value.struct_value (field 5)
        entry = b"\x0a\x01k" + b"\x12" + varint(len(value)) + value  # map entry: key "k", value
        inner = b"\x0a" + varint(len(entry)) + entry  # Struct.fields (field 1)
    method = b"\x0a\x04grpo" + b"\x12" + varint(len(inner)) + inner  # preset, reward_side
    return b"\x0a\x04tiny" + b"\x12" + varint(len(method)) + method  # base_model, method
