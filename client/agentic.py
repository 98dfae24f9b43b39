"""Build agentic (multi-turn, tool-using) trajectories from an agent loop, token ids end to end.

The service trains on exactly the tokens the model sampled and saw: it never re-tokenizes text, because
re-tokenizing a conversation does not give back the sampled tokens. So an agent loop keeps its running
context as token ids, sends it as the prompt, and records what came back::

    renderer = ChatTemplateRenderer(vllm_tokenizer(VLLM_URL, BASE_NAME))
    builder = TrajectoryBuilder(renderer.prompt_ids([{"role": "user", "content": task}]))
    for _ in range(max_turns):
        reply = post(VLLM_URL + "/v1/completions", {"model": f"{run_id}@v{version}",
                     "prompt": builder.context_ids, "max_tokens": 64, **COMPLETION_FIELDS})
        turn = builder.add_response(reply)            # token ids, log-probs and version of the model turn
        if done(turn): break
        builder.add_environment(renderer.environment_ids([{"role": "tool", "content": out}], turn.token_ids))
    run.submit_trajectories([[builder.build(reward), ...]])

Responses must carry token ids and log-probs: vLLM's ``/v1/completions`` (or ``/v1/chat/completions``)
with ``logprobs`` and ``return_tokens_as_token_ids`` (``COMPLETION_FIELDS``/``CHAT_FIELDS``); chat responses
with ``return_token_ids`` also carry ``prompt_token_ids``, which must equal the running context. Whatever
cannot be built faithfully raises ``InvalidArgument`` naming what is missing and how to ask for it.
Standard library only (the SDK needs no tokenizer package): tokenize through vLLM's ``/tokenize`` or pass
any ``tokenize(messages, add_generation_prompt) -> ids`` callable (e.g. a transformers tokenizer's).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from policyopt.client.errors import InvalidArgument
from policyopt.client.types import Trajectory, Turn, TurnRole

Message = Mapping[str, Any]
Tokenize = Callable[[list[Message], bool], Any]
"""``tokenize(messages, add_generation_prompt)``: the chat template rendered as token ids."""

COMPLETION_FIELDS: dict[str, Any] = {
    "logprobs": 0,
    "return_tokens_as_token_ids": True,
    "return_token_ids": True,
}
"""Extra ``/v1/completions`` fields a trajectory needs: the sampled token ids and their log-probs."""
CHAT_FIELDS: dict[str, Any] = {"logprobs": True, "return_tokens_as_token_ids": True, "return_token_ids": True}
"""The same for ``/v1/chat/completions``."""

_VERSION = re.compile(r"@v(\d+)$")
_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
_ASK = "request them with " + ", ".join(f"{k}={v!r}" for k, v in COMPLETION_FIELDS.items())


def adapter_version_of(model_name: str) -> int:
    """N of a served adapter name ``RUN@vN``; InvalidArgument for any other name."""
    match = _VERSION.search(model_name)
    if match is None:
        raise InvalidArgument(
            f"cannot tell the adapter version from the served model name {model_name!r}; sample with the "
            "run's adapter (RUN@vN) or pass adapter_version (0 for the base model)"
        )
    return int(match.group(1))


def _ids_from_token_strings(tokens: Sequence[str]) -> list[int]:
    ids = []
    for token in tokens:
        match = _TOKEN_ID.match(str(token))
        if match is None:
            raise InvalidArgument(
                f"the response gives tokens as text ({token!r}), not ids, and has no token_ids; {_ASK}"
            )
        ids.append(int(match.group(1)))
    return ids


def _completion_tokens(choice: Mapping[str, Any]) -> tuple[list[int], list[Any]]:
    """(token ids, log-probs) of a ``/v1/completions`` choice."""
    logprobs = choice.get("logprobs") or {}
    values = list(logprobs.get("token_logprobs") or [])
    ids = choice.get("token_ids")
    if ids is None:
        ids = _ids_from_token_strings(logprobs.get("tokens") or [])
    return [int(i) for i in ids], values


def _chat_tokens(choice: Mapping[str, Any]) -> tuple[list[int], list[Any]]:
    """(token ids, log-probs) of a ``/v1/chat/completions`` choice."""
    content = (choice.get("logprobs") or {}).get("content") or []
    values = [entry.get("logprob") for entry in content]
    ids = choice.get("token_ids")
    if ids is None:
        ids = _ids_from_token_strings([entry.get("token", "") for entry in content])
    return [int(i) for i in ids], values


def _prompt_token_ids(response: Mapping[str, Any], choice: Mapping[str, Any]) -> list[int] | None:
    ids = choice.get("prompt_token_ids", response.get("prompt_token_ids"))
    return [int(i) for i in ids] if ids is not None else None


def model_turn(
    response: Mapping[str, Any],
    *,
    choice: int = 0,
    adapter_version: int | None = None,
    reward: float | None = None,
    context_ids: Sequence[int] | None = None,
) -> Turn:
    """The model turn in an OpenAI-compatible response (a completion or a chat completion), as token ids.

    ``adapter_version`` defaults to N of the response's model name ``RUN@vN``. With ``context_ids``, the
    response's ``prompt_token_ids`` (when present) must equal them: the sample must extend the context.
    """
    choices = response.get("choices") or []
    if not 0 <= choice < len(choices):
        raise InvalidArgument(f"the response has {len(choices)} choices; choice {choice} does not exist")
    picked = choices[choice]
    ids, values = _chat_tokens(picked) if "message" in picked else _completion_tokens(picked)
    if not values or any(v is None for v in values):
        raise InvalidArgument(f"the response has no log-probs for its sampled tokens; {_ASK}")
    if len(values) != len(ids):
        raise InvalidArgument(f"the response has {len(values)} log-probs for {len(ids)} tokens; {_ASK}")
    prompt_ids = _prompt_token_ids(response, picked)
    if context_ids is not None and prompt_ids is not None and prompt_ids != list(context_ids):
        at = next((i for i, (a, b) in enumerate(zip(prompt_ids, context_ids, strict=False)) if a != b), None)
        where = f"position {at}" if at is not None else f"length ({len(prompt_ids)} vs {len(context_ids)})"
        raise InvalidArgument(
            f"the model was prompted with tokens that differ from the running context at {where}: the "
            "server re-rendered the conversation. Send the context as token ids (/v1/completions with "
            "prompt=builder.context_ids) so the sample extends it exactly"
        )
    version = (
        adapter_version if adapter_version is not None else adapter_version_of(str(response.get("model", "")))
    )
    return Turn.model(ids, [float(v) for v in values], version, reward)


class TrajectoryBuilder:
    """One episode: the prompt ids, then model and environment turns appended in order."""

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        if not prompt_ids:
            raise InvalidArgument(
                "a trajectory needs prompt ids (the rendered prompt, e.g. renderer.prompt_ids)"
            )
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.turns: list[Turn] = []

    @property
    def context_ids(self) -> list[int]:
        """Prompt plus every turn so far: send exactly this as the next prompt."""
        return self.prompt_ids + [i for turn in self.turns for i in turn.token_ids]

    def add_response(
        self,
        response: Mapping[str, Any],
        *,
        choice: int = 0,
        adapter_version: int | None = None,
        reward: float | None = None,
    ) -> Turn:
        """Append the model turn of ``response`` (see ``model_turn``); it must extend the context."""
        turn = model_turn(
            response,
            choice=choice,
            adapter_version=adapter_version,
            reward=reward,
            context_ids=self.context_ids,
        )
        if not turn.token_ids:
            raise InvalidArgument("the response sampled no tokens; a model turn needs at least one")
        self.turns.append(turn)
        return turn

    def add_model_turn(self, turn: Turn) -> None:
        if turn.role != TurnRole.MODEL or len(turn.logprobs) != len(turn.token_ids):
            raise InvalidArgument("a model turn needs one sampler log-prob per token id")
        self.turns.append(turn)

    def add_environment(self, token_ids: Sequence[int]) -> Turn:
        """Append tool output or other environment tokens (already rendered with the chat template)."""
        if not token_ids:
            raise InvalidArgument("an environment turn needs token ids (render it with ChatTemplateRenderer)")
        turn = Turn.environment([int(i) for i in token_ids])
        self.turns.append(turn)
        return turn

    def build(self, reward: float) -> Trajectory:
        """The trajectory with its outcome reward; it needs at least one model turn."""
        if not any(t.role == TurnRole.MODEL for t in self.turns):
            raise InvalidArgument("the trajectory has no model turn, so there is nothing to train on")
        return Trajectory(list(self.prompt_ids), list(self.turns), float(reward))


def _as_ids(rendered: Any) -> list[int]:
    """Token ids from a tokenize callable's result: a list, or a mapping with ``input_ids``."""
    if isinstance(rendered, Mapping) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return [int(i) for i in rendered]


class ChatTemplateRenderer:
    """Chat-template rendering as token ids, for prompts and for environment turns.

    ``environment_ids`` renders new messages (tool output, user replies) as the tokens that follow a
    model turn, without re-rendering the model's own tokens: it takes the difference between the template
    on a fixed stand-in conversation with and without the new messages. When the model's last token (its
    end-of-turn token) is followed by more template tokens (a newline in ChatML), those come first.
    """

    _STAND_IN: list[Message] = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The conversation so far, with the generation prompt of the assistant's turn."""
        return _as_ids(self.tokenize(list(messages), True))

    def environment_ids(self, messages: Sequence[Message], after_model_ids: Sequence[int]) -> list[int]:
        """Tokens of ``messages`` (and the next assistant generation prompt) after a model turn."""
        before = _as_ids(self.tokenize(list(self._STAND_IN), False))
        full = _as_ids(self.tokenize([*self._STAND_IN, *messages], True))
        if full[: len(before)] != before:
            raise InvalidArgument(
                "the chat template does not render new messages as a suffix of the conversation, so "
                "environment turns cannot be rendered alone; pass their token ids to add_environment yourself"
            )
        closing: list[int] = []
        if after_model_ids and after_model_ids[-1] in before:
            last = len(before) - 1 - before[::-1].index(after_model_ids[-1])
            closing = before[last + 1 :]
        return closing + full[len(before) :]


def vllm_tokenizer(base_url: str, model: str, timeout_s: float = 60.0) -> Tokenize:
    """A ``Tokenize`` that renders the chat template on a vLLM server (``POST /tokenize``)."""

    def tokenize(messages: list[Message], add_generation_prompt: bool) -> list[int]:
        body = {"model": model, "messages": messages, "add_generation_prompt": add_generation_prompt}
        request = urllib.request.Request(
            base_url.rstrip("/") + "/tokenize",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return [int(i) for i in json.loads(reply.read())["tokens"]]

    return tokenize


__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "ChatTemplateRenderer",
    "Tokenize",
    "TrajectoryBuilder",
    "adapter_version_of",
    "model_turn",
    "vllm_tokenizer",
]
