"""FinishEpisode: a session ``policyopt proxy`` recorded becomes an episode; ``group_size`` episodes of one
task key become one trajectory group, queued the way SubmitTrajectories queues its groups.

Each trajectory of the episode (more than one when the agent rewrote its history, see
``state.episodes.segments``) gets the episode's reward and components. Episodes of one task key wait in
Redis (``EpisodeStore.add_episode``) until the run's ``group_size`` have finished; that group is then
validated (``validate_trajectory_groups``), converted (``trajectory_group_from_input``) and queued
(``WorkQueue.enqueue_groups``).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace

from policyopt.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from policyopt.core.identifiers import (
    COMPONENT_NAME_RULE,
    SESSION_ID_RULE,
    is_component_name,
    is_session_id,
    quote,
)
from policyopt.core.telemetry import inject_context
from policyopt.core.types import MAX_REWARD_COMPONENTS, Run, RunStatus, TrajectoryGroup
from policyopt.server.convert import GroupInput, TrajectoryInput, TurnInput, trajectory_group_from_input
from policyopt.server.validation import validate_trajectory_groups
from policyopt.state import WorkQueue
from policyopt.state.episodes import EpisodeStore, FinishedEpisode, Segment, segments

MAX_TASK_KEY_CHARS = 256
"""Longest task key; episodes are grouped by it (hashed into the Redis key)."""


@dataclass(frozen=True)
class EpisodeRequest:
    """FinishEpisode's fields, as plain values."""

    session_id: str
    reward: float
    task_key: str
    components: dict[str, float]


@dataclass(frozen=True)
class EpisodeOutcome:
    trajectories: int
    model_tokens: int
    pending_in_group: int
    group_id: str = ""


def check_episode(request: EpisodeRequest, run: Run) -> None:
    """Everything about the request that needs no Redis; the session is only taken once this passes."""
    if run.status != RunStatus.RUNNING:
        raise FailedPrecondition(f"run {run.run_id} is {run.status.value} and takes no more episodes")
    if not is_session_id(request.session_id):
        raise InvalidArgument(
            f"session_id {quote(request.session_id)} is not a session id ({SESSION_ID_RULE}); give the id the "
            "agent sent to the proxy (x-policyopt-session header or the `user` field)"
        )
    if len(request.task_key) > MAX_TASK_KEY_CHARS:
        raise InvalidArgument(
            f"task_key is {len(request.task_key)} characters; give at most {MAX_TASK_KEY_CHARS}"
        )
    values = [request.reward, *request.components.values()]
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument("reward and components must be finite numbers (map a failure to a low reward)")
    if len(request.components) > MAX_REWARD_COMPONENTS:
        raise InvalidArgument(
            f"{len(request.components)} reward components; give at most {MAX_REWARD_COMPONENTS}"
        )
    bad = [name for name in request.components if not is_component_name(name)]
    if bad:
        raise InvalidArgument(
            f"reward component {quote(bad[0])} is not a component name ({COMPONENT_NAME_RULE})"
        )


def finish_episode(
    episodes: EpisodeStore,
    queue: WorkQueue,
    run: Run,
    request: EpisodeRequest,
    limits: tuple[int, int],
    max_queued_groups: int,
) -> EpisodeOutcome:
    """Take the session's calls, queue the episode under its task key, and queue the group it completes."""
    check_episode(request, run)
    if queue.queued_groups(run.run_id) >= max_queued_groups:
        raise ResourceExhausted(
            f"run {run.run_id} has {max_queued_groups} groups waiting for the trainer (POLICYOPT_MAX_QUEUED_PROMPTS); "
            "finish this episode again once the trainer has caught up (the session is kept)"
        )
    calls = episodes.take(run.run_id, request.session_id)
    if not calls:
        raise NotFound(
            f"no calls recorded for session {quote(request.session_id)} of run {run.run_id}: send chat "
            "completions through `policyopt proxy` with this session id first (sessions expire after "
            "POLICYOPT_EPISODE_TTL_S, and FinishEpisode takes a session once)"
        )
    parts = segments(calls)
    model_tokens = sum(s.model_tokens for s in parts)
    if model_tokens == 0:
        raise FailedPrecondition(
            f"session {quote(request.session_id)} sampled no tokens, so there is nothing to train on; "
            "give the model room (max_tokens) to answer"
        )
    episode = FinishedEpisode(parts, request.reward, dict(request.components))
    waiting, taken = episodes.add_episode(run.run_id, request.task_key, episode, run.config.group_size)
    outcome = EpisodeOutcome(trajectories=len(parts), model_tokens=model_tokens, pending_in_group=waiting)
    if not taken:
        return outcome
    group = _group(run, request.task_key, taken, limits)
    queue.enqueue_groups(run.run_id, [group])
    return replace(outcome, pending_in_group=0, group_id=group.group_id)


def _group(run: Run, task_key: str, taken: list[FinishedEpisode], limits: tuple[int, int]) -> TrajectoryGroup:
    """The trajectory group of ``group_size`` episodes, validated as SubmitTrajectories validates its groups."""
    inputs: list[TrajectoryInput] = []
    components: list[dict[str, float]] = []
    for episode in taken:
        for segment in episode.segments:
            inputs.append(_trajectory_input(segment, episode.reward))
            components.append(dict(episode.components))
    group_input = GroupInput(trajectories=inputs, metadata={"task_key": task_key})
    try:
        validate_trajectory_groups([group_input], run, limits)
    except InvalidArgument as exc:
        raise FailedPrecondition(
            f"the episodes of task key {quote(task_key)} cannot train together: {exc}"
        ) from exc
    group = trajectory_group_from_input(
        run.run_id, f"g-{uuid.uuid4().hex[:12]}", group_input, inject_context()
    )
    trajectories = [
        replace(t, reward_components=c) for t, c in zip(group.trajectories, components, strict=True)
    ]
    return replace(group, trajectories=trajectories)


def _trajectory_input(segment: Segment, reward: float) -> TrajectoryInput:
    turns = [TurnInput(t.role, t.token_ids, t.logprobs, t.version, None) for t in segment.turns]
    return TrajectoryInput(prompt_ids=segment.prompt_ids, turns=turns, reward=reward)


__all__ = ["MAX_TASK_KEY_CHARS", "EpisodeOutcome", "EpisodeRequest", "check_episode", "finish_episode"]
