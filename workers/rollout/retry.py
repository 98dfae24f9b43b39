"""What becomes of a prompt whose reward call failed: retried later, deferred, or dropped with a reason.

Policy (settings ``reward_max_attempts``, ``reward_retry_backoff_s``):
- transient failure (endpoint down, deadline, overloaded): the prompt goes back to its run's queue after
  ``reward_retry_backoff_s * 2**(n-1)`` seconds (at most ``MAX_BACKOFF_S``) for its n-th retry, and is rolled
  out again; after ``reward_max_attempts`` failed rollouts it is dropped with an ERROR event.
- open circuit (the call was not made): the prompt waits for the cool-down; no attempt is spent.
- permanent failure (INVALID_ARGUMENT, a wrong number of scores, NaN...): dropped at once with an ERROR event.

Evaluations follow the same policy per chunk (``next_try``; ``workers/rollout/evaluate.py``).

Messages are written from our own errors (``RewardEndpointError`` is service-written), never from an
endpoint's reply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from policyopt.core.errors import PolicyOptError, RewardEndpointError
from policyopt.core.types import PromptTask

MAX_BACKOFF_S = 60.0
"""Longest wait before a retry, however many attempts came before."""
DEFER_S = 1.0
"""Shortest wait of a prompt put back without an attempt (open circuit, saturated endpoint)."""


@dataclass(frozen=True)
class Retry:
    """Send ``task`` back to its run's queue after ``delay_s``; ``counted``: an attempt was spent."""

    task: PromptTask
    delay_s: float
    counted: bool


@dataclass(frozen=True)
class Drop:
    """End the prompt with an ERROR event carrying ``message``."""

    message: str


def backoff_s(retry: int, base_s: float) -> float:
    """Wait before the ``retry``-th retry (1-based): ``base_s * 2**(retry-1)``, capped at ``MAX_BACKOFF_S``."""
    return min(MAX_BACKOFF_S, base_s * 2 ** max(0, retry - 1))


@dataclass(frozen=True)
class Backoff:
    """Try again after ``delay_s``; ``attempts`` failed reward attempts so far, ``counted``: this one was."""

    delay_s: float
    attempts: int
    counted: bool


def next_try(exc: Exception, attempts: int, *, max_attempts: int, base_backoff_s: float) -> Backoff | None:
    """When work whose reward call failed with ``exc`` (after ``attempts`` earlier failed attempts) is
    tried again; None when it is not: a permanent failure, or the ``max_attempts``-th transient one."""
    if isinstance(exc, RewardEndpointError) and exc.circuit_open:
        return Backoff(max(DEFER_S, exc.retry_after_s), attempts, counted=False)
    if isinstance(exc, RewardEndpointError) and exc.transient and attempts + 1 < max_attempts:
        return Backoff(backoff_s(attempts + 1, base_backoff_s), attempts + 1, counted=True)
    return None


def after_failure(
    task: PromptTask, exc: Exception, *, max_attempts: int, base_backoff_s: float
) -> Retry | Drop:
    """The fate of ``task`` after its rollout failed with ``exc``."""
    backoff = next_try(exc, task.reward_attempts, max_attempts=max_attempts, base_backoff_s=base_backoff_s)
    if backoff is not None:
        retried = dataclasses.replace(task, reward_attempts=backoff.attempts)
        return Retry(retried, backoff.delay_s, counted=backoff.counted)
    if isinstance(exc, RewardEndpointError) and exc.transient:
        attempts = task.reward_attempts + 1
        if attempts > 1:
            return Drop(
                f"prompt {task.prompt_id} dropped after {attempts} rollouts whose reward call failed: {exc}"
            )
        return Drop(f"prompt {task.prompt_id} skipped: {exc}")
    if isinstance(exc, PolicyOptError):
        return Drop(f"prompt {task.prompt_id} skipped: {exc}")
    return Drop(f"prompt {task.prompt_id} skipped: rollout failed with {type(exc).__name__}: {exc}")


__all__ = ["DEFER_S", "MAX_BACKOFF_S", "Backoff", "Drop", "Retry", "after_failure", "backoff_s", "next_try"]
