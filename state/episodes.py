"""Agent sessions recorded by ``policyopt proxy``, and the episodes waiting to form a group, in Redis.

Keys (all prefixed ``po:``, every one with a TTL of ``Settings.episode_ttl_s`` renewed on each write):
- ``po:run:{id}:session:{sid}:calls`` list of ``RecordedCall`` JSON, one per chat completion, in order
- ``po:run:{id}:session:{sid}:conversation`` the proxy's view of the conversation so far (``Conversation``):
  the messages it has seen and answered, and the token ids they came to, so the next call can extend them
- ``po:run:{id}:episodes:{sha256(task_key)}`` list of finished episodes (JSON) waiting for ``group_size``

``segments`` turns a session's calls into trajectories without re-tokenizing anything: a call whose prompt
ids extend the previous call's prompt + sampled ids continues the trajectory (the extra ids are an
environment turn), any other call starts a new one (the agent rewrote its history).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import redis

from policyopt.core.errors import ResourceExhausted
from policyopt.core.types import JSONValue, from_json, to_json

MAX_CALLS_PER_SESSION = 256
"""Chat completions one session may record before FinishEpisode; more are refused (RESOURCE_EXHAUSTED)."""

# Append one episode; when the task key holds ``group_size`` of them, take those out together.
_ADD_EPISODE = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local n = redis.call('LLEN', KEYS[1])
local size = tonumber(ARGV[2])
if n < size then return {n} end
local taken = redis.call('LRANGE', KEYS[1], 0, size - 1)
redis.call('LTRIM', KEYS[1], size, -1)
return {n - size, unpack(taken)}
"""


@dataclass(frozen=True)
class RecordedCall:
    """One chat completion: the prompt ids exactly as sent, what was sampled, and with which version."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    version: int
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Conversation:
    """The messages (normalized) the proxy has answered in a session, and the token ids they came to."""

    messages: list[JSONValue] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    tools: list[JSONValue] = field(default_factory=list)


@dataclass(frozen=True)
class Turn:
    """A model turn (sampled ids, their log-probs) or an environment turn (ids the next prompt added, no
    log-probs: nothing sampled them)."""

    role: str  # "model" | "environment"
    token_ids: list[int]
    logprobs: list[float]
    version: int = 0


@dataclass(frozen=True)
class Segment:
    """One trajectory of a session: the first call's prompt ids and the turns after them."""

    prompt_ids: list[int]
    turns: list[Turn]

    @property
    def model_tokens(self) -> int:
        return sum(len(t.token_ids) for t in self.turns if t.role == "model")


@dataclass(frozen=True)
class FinishedEpisode:
    """A finished session waiting for its group: its trajectories, reward and named components."""

    segments: list[Segment]
    reward: float
    components: dict[str, float] = field(default_factory=dict)


def segments(calls: list[RecordedCall]) -> list[Segment]:
    """The session's trajectories: one per run of calls whose prompts extend each other exactly."""
    result: list[Segment] = []
    context: list[int] = []
    for call in calls:
        if result and call.prompt_ids[: len(context)] == context:
            added = call.prompt_ids[len(context) :]
            if added:
                result[-1].turns.append(Turn("environment", added, []))
        else:
            result.append(Segment(prompt_ids=list(call.prompt_ids), turns=[]))
        result[-1].turns.append(Turn("model", call.completion_ids, call.logprobs, call.version))
        context = call.prompt_ids + call.completion_ids
    return result


def _session_key(run_id: str, session_id: str, part: str) -> str:
    return f"po:run:{run_id}:session:{session_id}:{part}"


def _episodes_key(run_id: str, task_key: str) -> str:
    return f"po:run:{run_id}:episodes:{hashlib.sha256(task_key.encode()).hexdigest()[:32]}"


class EpisodeStore:
    """Recorded calls per (run, session) and finished episodes per (run, task key)."""

    def __init__(self, r: redis.Redis, ttl_s: int) -> None:
        self.r = r
        self.ttl_s = max(1, ttl_s)
        self._add_episode = r.register_script(_ADD_EPISODE)

    def conversation(self, run_id: str, session_id: str) -> Conversation | None:
        raw = self.r.get(_session_key(run_id, session_id, "conversation"))
        return None if raw is None else from_json(Conversation, raw)

    def record(self, run_id: str, session_id: str, call: RecordedCall, conversation: Conversation) -> int:
        """Append ``call`` and keep ``conversation`` as the session's state; the session's call count."""
        calls = _session_key(run_id, session_id, "calls")
        if self.r.llen(calls) >= MAX_CALLS_PER_SESSION:
            raise ResourceExhausted(
                f"session {session_id} recorded {MAX_CALLS_PER_SESSION} calls, the most one episode may have; "
                "call FinishEpisode (run.finish_episode) and start a new session id"
            )
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(calls, to_json(call))
        pipe.expire(calls, self.ttl_s)
        pipe.set(_session_key(run_id, session_id, "conversation"), to_json(conversation), ex=self.ttl_s)
        count: int = pipe.execute()[0]
        return count

    def take(self, run_id: str, session_id: str) -> list[RecordedCall]:
        """The session's calls, removed with its state (one MULTI); empty when nothing was recorded."""
        calls = _session_key(run_id, session_id, "calls")
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(calls, 0, -1)
        pipe.delete(calls, _session_key(run_id, session_id, "conversation"))
        raw = pipe.execute()[0]
        return [from_json(RecordedCall, item) for item in raw]

    def add_episode(
        self, run_id: str, task_key: str, episode: FinishedEpisode, group_size: int
    ) -> tuple[int, list[FinishedEpisode]]:
        """Queue an episode under ``task_key``: (episodes still waiting, the full group when this one completed it)."""
        reply = self._add_episode(
            keys=[_episodes_key(run_id, task_key)],
            args=[to_json(episode), group_size, self.ttl_s],
        )
        waiting, taken = int(reply[0]), reply[1:]
        return waiting, [from_json(FinishedEpisode, item) for item in taken]


__all__ = [
    "MAX_CALLS_PER_SESSION",
    "Conversation",
    "EpisodeStore",
    "FinishedEpisode",
    "RecordedCall",
    "Segment",
    "Turn",
    "segments",
]
