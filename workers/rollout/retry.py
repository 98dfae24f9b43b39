"""What becomes of a prompt whose reward call failed: retried later, deferred, or dropped with a reason.

Policy (settings ``reward_max_attempts``, ``reward_retry_backoff_s``):
- transient failure (endpoint down, deadline, overloaded): the prompt goes back to its run's queue after
  ``reward_retry_backoff_s * 2**(n-1)`` seconds (at most ``MAX_BACKOFF_S``) for its n-th retry, and is rolled
  out again; after ``reward_max_attempts`` failed rollouts it is dropped with an ERROR event.
- open circuit (the call was not made): the prompt waits for the cool-down; no attempt is spent.
- permanent failure (INVALID_ARGUMENT, a wrong number of scores, NaN...): dropped at once with an ERROR event.

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


def after_failure(
    task: PromptTask, exc: Exception, *, max_attempts: int, base_backoff_s: float
) -> Retry | Drop:
    """The fate of ``task`` after its rollout failed with ``exc``."""
    if isinstance(exc, RewardEndpointError) and exc.circuit_open:
        return Retry(task, max(DEFER_S, exc.retry_after_s), counted=False)
    if isinstance(exc, RewardEndpointError) and exc.transient:
        attempts = task.reward_attempts + 1
        if attempts < max_attempts:
            retried = dataclasses.replace(task, reward_attempts=attempts)
            return Retry(retried, backoff_s(attempts, base_backoff_s), counted=True)
        if attempts > 1:
            return Drop(
                f"prompt {task.prompt_id} dropped after {attempts} rollouts whose reward call failed: {exc}"
            )
        return Drop(f"prompt {task.prompt_id} skipped: {exc}")
    if isinstance(exc, PolicyOptError):
        return Drop(f"prompt {task.prompt_id} skipped: {exc}")
    return Drop(f"prompt {task.prompt_id} skipped: rollout failed with {type(exc).__name__}: {exc}")


__all__ = ["DEFER_S", "MAX_BACKOFF_S", "Drop", "Retry", "after_failure", "backoff_s"]
