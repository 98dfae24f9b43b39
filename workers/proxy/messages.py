"""OpenAI chat messages in and out: checked and normalized, rendered for a chat template, tool calls parsed.

Tool calls use the Hermes format that Qwen2.5, SmolLM and our ``tiny`` template render and sample::

    <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>

The proxy parses them out of the sampled text into OpenAI ``tool_calls`` (``finish_reason`` "tool_calls");
text outside the blocks is the message's ``content``. A block that is not JSON with a ``name`` stays text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import cast

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import JSONValue

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 512
"""Messages one request may carry."""
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

Message = dict[str, JSONValue]


def _content(raw: object, where: str) -> str:
    """A message's text: a string, null, or a list of ``{"type": "text", "text": ...}`` parts."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in raw):
        return "".join(str(p.get("text", "")) for p in raw)
    raise InvalidArgument(
        f"{where}.content must be a string or a list of text parts; images are not supported"
    )


def _tool_call(raw: object, where: str) -> Message:
    """``{"name", "arguments"}`` of an OpenAI tool call (its ``arguments`` are a JSON string)."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidArgument(
            f"{where} must look like {{'type': 'function', 'function': {{'name', 'arguments'}}}}"
        )
    arguments = function.get("arguments", "{}")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}.function.arguments is not JSON: {exc}") from exc
    return {"name": function["name"], "arguments": cast(JSONValue, parsed)}


def normalize(raw_messages: object) -> list[Message]:
    """The request's messages as ``{"role", "content"[, "tool_calls"]}``: what the template renders.

    Two requests whose normalized messages agree render the same, so the proxy compares these to tell a
    continued conversation from a rewritten one (tool call ids are not rendered, so they are not kept).
    """
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidArgument("messages must be a non-empty list")
    if len(raw_messages) > MAX_MESSAGES:
        raise InvalidArgument(f"{len(raw_messages)} messages; send at most {MAX_MESSAGES}")
    result = []
    for i, raw in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            raise InvalidArgument(f"{where} must be an object with a role in {list(ROLES)}")
        role = "system" if raw["role"] == "developer" else raw["role"]
        message: Message = {"role": role, "content": _content(raw.get("content"), where)}
        calls = raw.get("tool_calls") or []
        if calls and role == "assistant":
            message["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        result.append(message)
    return result


def for_template(messages: list[Message]) -> list[dict[str, object]]:
    """Normalized messages as Hugging Face chat templates take them (tool call arguments as objects)."""
    rendered: list[dict[str, object]] = []
    for message in messages:
        item: dict[str, object] = {"role": message["role"], "content": message["content"]}
        calls = cast(list[Message], message.get("tool_calls") or [])
        if calls:
            item["tool_calls"] = [
                {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ]
        rendered.append(item)
    return rendered


def parse_reply(text: str) -> tuple[str, list[Message]]:
    """(content, tool calls) of sampled text; a block that is not a JSON call with a name stays in content."""
    calls: list[Message] = []

    def take(match: re.Match[str]) -> str:
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return match.group(0)
        calls.append({"name": call["name"], "arguments": call.get("arguments", {})})
        return ""

    content = _TOOL_CALL.sub(take, text)
    return (content.strip() if calls else content), calls


def assistant_message(content: str, calls: list[Message]) -> Message:
    """The reply as ``normalize`` would give it back when the agent appends it to its history."""
    message: Message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = cast(JSONValue, calls)
    return message


def openai_message(content: str, calls: list[Message]) -> dict[str, object]:
    """The reply in OpenAI's chat-completion shape (arguments as a JSON string, one id per call)."""
    message: dict[str, object] = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for c in calls
        ]
    return message


__all__ = ["Message", "assistant_message", "for_template", "normalize", "openai_message", "parse_reply"]
