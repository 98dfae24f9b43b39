"""One chat completion through the proxy: render, sample with the run's newest version, record, reply.

``ChatCompletions.complete`` takes the parsed request body and returns the OpenAI-shaped reply. It raises
the service's domain errors (``core.errors``); ``app.py`` maps them to HTTP statuses.

Sampling uses the run's own ``temperature`` and ``top_p`` (a request's are ignored), so the recorded
log-probs are those of the distribution the trainer corrects for; ``max_tokens`` (or
``max_completion_tokens``) is honoured up to the run's ``max_new_tokens`` and the model's context.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import cast

from policyopt.core.errors import FailedPrecondition, InvalidArgument
from policyopt.core.identifiers import SESSION_ID_RULE, is_session_id, quote
from policyopt.core.types import JSONValue, Run, RunStatus
from policyopt.state import AdapterStore, RunStore
from policyopt.state.episodes import Conversation, EpisodeStore, RecordedCall
from policyopt.workers.adapter_refs import open_adapter
from policyopt.workers.engines import RolloutEngine, Sample, SamplingParams
from policyopt.workers.proxy.messages import assistant_message, normalize, openai_message, parse_reply
from policyopt.workers.proxy.prompts import PromptBuilder

MAX_TOOLS = 128
"""Tools one request may declare."""


@dataclass(frozen=True)
class Completion:
    """The reply body, and what the proxy measured of the call (reply headers)."""

    body: dict[str, object]
    engine_seconds: float
    version: int


class ChatCompletions:
    """Chat completions for one run, sampled by ``engine`` and recorded in ``episodes``."""

    def __init__(
        self,
        run_id: str,
        runs: RunStore,
        adapters: AdapterStore,
        episodes: EpisodeStore,
        engine: RolloutEngine,
        prompts: PromptBuilder,
    ) -> None:
        self.run_id, self.runs, self.adapters, self.episodes = run_id, runs, adapters, episodes
        self.engine, self.prompts = engine, prompts
        self._sampling = threading.Lock()  # one engine call at a time: engines are not thread-safe

    def run(self, tenant: str) -> Run:
        """The proxy's run when it is ``tenant``'s; NotFound otherwise (as for a run that does not exist)."""
        return self.runs.get_run(self.run_id, tenant)

    def complete(self, body: dict[str, object], session_id: str, tenant: str) -> Completion:
        """Sample a reply to ``body`` (an OpenAI chat-completions request) and record the call."""
        run = self.run(tenant)
        if run.status != RunStatus.RUNNING:
            raise FailedPrecondition(
                f"run {run.run_id} is {run.status.value}; the proxy samples for running runs"
            )
        session_id = session_id or str(body.get("user") or "")
        if not is_session_id(session_id):
            raise InvalidArgument(
                f"no usable session id ({quote(session_id)}): send the `x-policyopt-session` header or the "
                f"`user` field, {SESSION_ID_RULE}, one per episode"
            )
        messages, tools = normalize(body.get("messages")), _tools(body.get("tools"))
        conversation = self.episodes.conversation(run.run_id, session_id)
        prompt = self.prompts.build(messages, tools, conversation)
        sample, seconds, version = self._sample(run, prompt.token_ids, body)
        content, calls = parse_reply(sample.text)
        self.episodes.record(
            run.run_id,
            session_id,
            RecordedCall(
                prompt.token_ids,
                sample.completion_ids,
                sample.sampler_logprobs,
                version,
                sample.finish_reason,
            ),
            Conversation(
                messages=[*messages, assistant_message(content, calls)],
                token_ids=prompt.token_ids + sample.completion_ids,
                tools=tools,
            ),
        )
        finish = "tool_calls" if calls else sample.finish_reason
        return Completion(
            _reply(run, version, content, calls, finish, prompt.token_ids, sample), seconds, version
        )

    def _sample(self, run: Run, prompt_ids: list[int], body: dict[str, object]) -> tuple[Sample, float, int]:
        room = self.engine.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidArgument(
                f"the conversation is {len(prompt_ids)} tokens and the model's context is "
                f"{self.engine.context_length}; start a new session or shorten the history"
            )
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or run.config.max_new_tokens
        if not isinstance(asked, int) or asked < 1:
            raise InvalidArgument(f"max_tokens must be a positive integer, got {quote(asked)}")
        seed = body.get("seed")
        params = SamplingParams(
            max_new_tokens=min(asked, run.config.max_new_tokens, room),
            temperature=run.config.temperature,
            top_p=run.config.top_p,
            seed=seed if isinstance(seed, int) else None,
        )
        adapter = open_adapter(self.adapters, run, reader="the proxy")
        with self._sampling:
            started = time.perf_counter()
            sample = self.engine.sample([prompt_ids], 1, params, adapter)[0][0]
            seconds = time.perf_counter() - started
        return sample, seconds, run.version


def _tools(raw: object) -> list[JSONValue]:
    """The request's ``tools`` (OpenAI function tools), checked for shape only; the template renders them."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidArgument(f"tools must be a list of at most {MAX_TOOLS} function tools")
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidArgument(
                f"tools[{i}] must look like {{'type': 'function', 'function': {{'name': ...}}}}"
            )
    return cast(list[JSONValue], raw)


def _reply(
    run: Run,
    version: int,
    content: str,
    calls: list[dict[str, JSONValue]],
    finish: str,
    prompt_ids: list[int],
    sample: Sample,
) -> dict[str, object]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{run.run_id}@v{version}",
        "choices": [
            {"index": 0, "message": openai_message(content, calls), "finish_reason": finish, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(sample.completion_ids),
            "total_tokens": len(prompt_ids) + len(sample.completion_ids),
        },
    }


__all__ = ["MAX_TOOLS", "ChatCompletions", "Completion"]
