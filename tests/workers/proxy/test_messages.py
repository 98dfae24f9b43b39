"""The proxy's pieces without a server: tool calls parsed from sampled text and rendered back, prompts that
extend a conversation token for token, and sessions cut into trajectories where the history was rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from policyopt.core.errors import InvalidArgument
from policyopt.state.episodes import Conversation, RecordedCall, segments
from policyopt.workers.proxy.messages import assistant_message, normalize, openai_message, parse_reply
from policyopt.workers.proxy.prompts import PromptBuilder

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALL_TEXT = 'Let me add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def test_hermes_tool_calls_are_parsed_and_a_malformed_block_stays_text() -> None:
    content, calls = parse_reply(CALL_TEXT)
    assert content == "Let me add." and calls == [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    broken = "<tool_call>{not json}</tool_call>"
    assert parse_reply(broken) == (broken, [])
    assert parse_reply('<tool_call>{"arguments": {}}</tool_call>')[1] == []  # no name: not a call


def test_a_reply_the_agent_appends_normalizes_to_what_the_proxy_remembers() -> None:
    content, calls = parse_reply(CALL_TEXT)
    sent = openai_message(content, calls)
    assert sent["tool_calls"][0]["function"]["arguments"] == '{"a": 2, "b": 3}'  # type: ignore[index]
    assert normalize([sent]) == [assistant_message(content, calls)]
    assert normalize([openai_message("plain", [])]) == [assistant_message("plain", [])]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "non-empty list"),
        ([{"role": "wizard", "content": "x"}], "role in"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "text parts"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "{"}}]}],
            "not JSON",
        ),
    ],
)
def test_bad_messages_say_what_to_fix(messages: list[object], expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        normalize(messages)


def test_a_continued_conversation_extends_the_sampled_ids_and_matches_a_fresh_rendering(
    tiny_model_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    builder = PromptBuilder(tokenizer)
    first = normalize([{"role": "user", "content": "What is 2 plus 3?"}])
    prompt = builder.build(first, TOOLS, None)
    assert not prompt.extended and '"name": "add"' in tokenizer.decode(prompt.token_ids)
    # the model "sampled" the template's own rendering of a tool call, then its end of turn
    sampled = tokenizer('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>',
                        add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # fmt: skip
    content, calls = parse_reply(tokenizer.decode(sampled, skip_special_tokens=True))
    remembered = Conversation([*first, assistant_message(content, calls)], prompt.token_ids + sampled, TOOLS)
    raw_follow_up = [openai_message(content, calls), {"role": "tool", "content": "5"}]
    follow_up = normalize([*first, *raw_follow_up])
    extended = builder.build(follow_up, TOOLS, remembered)
    assert extended.extended
    assert extended.token_ids[: len(remembered.token_ids)] == remembered.token_ids
    added = tokenizer.decode(extended.token_ids[len(remembered.token_ids) :])
    assert added == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"
    assert extended.token_ids == builder.build(follow_up, TOOLS, None).token_ids
    # other tools, or a rewritten first message: rendered afresh
    assert not builder.build(follow_up, [], remembered).extended
    rewritten = normalize([{"role": "user", "content": "What is 1 plus 1?"}, *raw_follow_up])
    assert not builder.build(rewritten, TOOLS, remembered).extended


def test_a_session_is_one_trajectory_until_a_prompt_does_not_extend_the_last() -> None:
    calls = [
        RecordedCall([1, 2], [3, 4], [-0.1, -0.2], 0),
        RecordedCall([1, 2, 3, 4, 5, 6], [7], [-0.3], 1),  # environment turn [5, 6]
        RecordedCall([1, 9], [8], [-0.4], 1),  # history rewritten: a new trajectory
    ]
    first, second = segments(calls)
    assert first.prompt_ids == [1, 2]
    assert [(t.role, t.token_ids, t.logprobs, t.version) for t in first.turns] == [
        ("model", [3, 4], [-0.1, -0.2], 0),
        ("environment", [5, 6], [], 0),
        ("model", [7], [-0.3], 1),
    ]
    assert second.prompt_ids == [1, 9] and first.model_tokens == 3 and second.model_tokens == 1
