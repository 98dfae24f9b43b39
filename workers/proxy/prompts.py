"""The prompt token ids of a chat completion: the conversation so far, extended, or rendered afresh.

When the request's messages start with exactly the messages the proxy already answered in this session
(its own reply included), the prompt is the previous call's prompt ids + the ids it sampled + the ids of
the new messages: the sampled ids are kept as sampled, never re-tokenized, so the trajectory the trainer
sees is the one the model produced. The new messages' ids are the chat template's rendering of the whole
conversation past the end of the previous reply (its end-of-turn token), tokenized as a fragment.

Any other request (a new session, an agent that rewrote or trimmed its history, changed tools) is rendered
from scratch with the chat template; FinishEpisode then starts a new trajectory at that call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from policyopt.core.errors import FailedPrecondition
from policyopt.core.types import JSONValue
from policyopt.state.episodes import Conversation
from policyopt.workers.proxy.messages import Message, for_template

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Prompt:
    """Token ids to sample from; ``extended`` when they continue the session's conversation."""

    token_ids: list[int]
    extended: bool


class PromptBuilder:
    """Renders conversations with the model's chat template (tools included)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not tokenizer.chat_template:
            raise FailedPrecondition("the run's base model has no chat template; the proxy needs one")
        self.tokenizer = tokenizer
        self.eos = str(tokenizer.eos_token or "")

    def build(
        self, messages: list[Message], tools: list[JSONValue], conversation: Conversation | None
    ) -> Prompt:
        """The prompt ids for ``messages``, extending ``conversation`` when they continue it."""
        if conversation is not None:
            ids = self._extension(messages, tools, conversation)
            if ids is not None:
                return Prompt(ids, extended=True)
        encoded = self.tokenizer.apply_chat_template(
            for_template(messages),  # type: ignore[arg-type]
            tools=cast("list[dict[str, object]]", tools) or None,  # type: ignore[arg-type]
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        return Prompt([int(i) for i in cast("BatchEncoding", encoded)["input_ids"]], extended=False)

    def _extension(
        self, messages: list[Message], tools: list[JSONValue], conversation: Conversation
    ) -> list[int] | None:
        seen = len(conversation.messages)
        if conversation.tools != tools or len(messages) <= seen or messages[:seen] != conversation.messages:
            return None
        full = self._text(messages, tools, generation=True)
        before = self._text(messages[:seen], tools, generation=False)
        end = before.rfind(self.eos) + len(self.eos) if self.eos and self.eos in before else len(before)
        if not full.startswith(before[:end]):
            return None  # a template that renders earlier turns differently once more follow
        suffix = full[end:]
        if self.eos and conversation.token_ids[-1:] != [self.tokenizer.eos_token_id]:
            suffix = self.eos + suffix  # the reply was cut at max_tokens: the template closes the turn
        added = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        return list(conversation.token_ids) + [int(i) for i in added]

    def _text(self, messages: list[Message], tools: list[JSONValue], *, generation: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                for_template(messages),  # type: ignore[arg-type]
                tools=cast("list[dict[str, object]]", tools) or None,  # type: ignore[arg-type]
                add_generation_prompt=generation,
                tokenize=False,
            )
        )


__all__ = ["Prompt", "PromptBuilder"]
