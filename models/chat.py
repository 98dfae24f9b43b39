"""The one rendering of a submitted prompt into token ids, shared by the server and the rollout engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase


def encode_user_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` as one user message with the chat template's generation prompt.

    The one rendering of a submitted prompt: the server's length check and every rollout engine use it,
    so what is checked is what is sampled from. A tokenizer without a chat template encodes the plain text.
    """
    if not tokenizer.chat_template:
        return [int(i) for i in tokenizer(text)["input_ids"]]
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return [int(i) for i in cast("BatchEncoding", encoded)["input_ids"]]


__all__ = ["encode_user_prompt"]
