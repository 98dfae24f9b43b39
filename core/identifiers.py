"""Formats of the identifiers a caller sends, checked before they reach Redis or the file system.

A run id is ``run-`` and 12 hex digits; an event id is a Redis stream id (``ms`` or ``ms-seq``); an adapter
version is ``latest`` or a positive integer; an endpoint name is 1-64 letters, digits, ``.``, ``_`` or
``-``; a file name is one plain path component. A malformed run id is NOT_FOUND with the same message as
an unknown one, so the answer never depends on what exists; everything else malformed is INVALID_ARGUMENT.

``quote`` is how every message echoes what the caller sent: at most a short prefix.
The client imports this module too (standard library and ``core.errors`` only).
"""

from __future__ import annotations

import re

from policyopt.core.errors import InvalidArgument, NotFound

MAX_INT64 = (1 << 63) - 1
MAX_UINT64 = (1 << 64) - 1
QUOTE_LIMIT = 64

_RUN_ID = re.compile(r"run-[0-9a-f]{12}")
_EVENT_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_VERSION = re.compile(r"[0-9]{1,19}")
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENDPOINT_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Reward component names become metric keys (reward/component/NAME) and Prometheus label values.
COMPONENT_NAME_RULE = ENDPOINT_NAME_RULE
# An agent's session id (policyopt proxy): part of a Redis key, so printable and bounded.
_SESSION_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SESSION_ID_RULE = "1-128 letters, digits, '.', '_', ':', '@' or '-'"


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to its first ``limit`` characters (marked ``...``, with the full length)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_run_id(text: str) -> bool:
    return _RUN_ID.fullmatch(text) is not None


def is_endpoint_name(text: str) -> bool:
    return _ENDPOINT_NAME.fullmatch(text) is not None


def is_component_name(text: str) -> bool:
    return _ENDPOINT_NAME.fullmatch(text) is not None


def is_session_id(text: str) -> bool:
    return _SESSION_ID.fullmatch(text) is not None


def is_plain_file_name(name: str) -> bool:
    """One path component: no separator, not ``.``/``..``, no NUL, not absolute, at most 255 bytes."""
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in "/\\\x00")
        and len(name.encode("utf-8", "surrogatepass")) <= 255
    )


def run_id(text: str) -> str:
    """``text`` when it is a run id; else NotFound, worded as for a run that does not exist."""
    if not is_run_id(text):
        raise NotFound(f"run {quote(text)} does not exist; list your runs with ListRuns")
    return text


def event_id(text: str) -> str:
    """A Redis stream id after which to read events: "" (from the start), ``ms`` or ``ms-seq``."""
    if text == "":
        return "0"
    found = _EVENT_ID.fullmatch(text)
    if found is None or any(int(part) > MAX_UINT64 for part in found.groups() if part is not None):
        raise InvalidArgument(
            f"after_event_id {quote(text)} is not an event id; pass the event_id of a RunEvent "
            "(like 1718000000000-0), or leave it empty to start from the first event"
        )
    return text


def version(text: str) -> int | str:
    """``"latest"`` (or empty) stays a string; anything else must be an integer >= 0 (0: a warm start's adapter)."""
    if text in ("", "latest"):
        return "latest"
    if _VERSION.fullmatch(text) is None or not 0 <= int(text) <= MAX_INT64:
        raise InvalidArgument(f"version must be 'latest' or a non-negative integer, got {quote(text)}")
    return int(text)


def endpoint_name(text: str) -> str:
    """``text`` when it is an endpoint name; else InvalidArgument."""
    if not is_endpoint_name(text):
        raise InvalidArgument(f"endpoint name {quote(text)} must be {ENDPOINT_NAME_RULE}")
    return text


__all__ = [
    "COMPONENT_NAME_RULE",
    "ENDPOINT_NAME_RULE",
    "SESSION_ID_RULE",
    "is_component_name",
    "is_session_id",
    "MAX_INT64",
    "endpoint_name",
    "event_id",
    "is_endpoint_name",
    "is_plain_file_name",
    "is_run_id",
    "quote",
    "run_id",
    "version",
]
