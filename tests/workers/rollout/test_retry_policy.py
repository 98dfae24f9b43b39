"""after_failure: transient reward failures come back with doubling backoff up to the attempt limit."""

from __future__ import annotations

from policyopt.core.errors import InvalidArgument, RewardEndpointError
from policyopt.core.types import PromptTask
from policyopt.workers.rollout.retry import DEFER_S, MAX_BACKOFF_S, Drop, Retry, after_failure, backoff_s

TASK = PromptTask(run_id="run-1", prompt_id="p7", prompt="2 + 2?", attempt=1)
DOWN = RewardEndpointError("reward endpoint 'ep' could not score the group", transient=True)


def fate(task: PromptTask, exc: Exception) -> Retry | Drop:
    return after_failure(task, exc, max_attempts=5, base_backoff_s=2.0)


def test_backoff_doubles_from_the_base_and_stops_at_sixty_seconds() -> None:
    assert [backoff_s(n, 2.0) for n in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF_S]


def test_a_transient_failure_is_retried_until_the_last_attempt() -> None:
    task, delays = TASK, []
    for _ in range(4):
        decision = fate(task, DOWN)
        assert isinstance(decision, Retry) and decision.counted
        task = decision.task
        delays.append(decision.delay_s)
    assert delays == [2.0, 4.0, 8.0, 16.0] and task.reward_attempts == 4
    assert task.attempt == 1  # dynamic sampling's counter is another thing
    last = fate(task, DOWN)
    assert isinstance(last, Drop)
    assert last.message.startswith("prompt p7 dropped after 5 rollouts") and "could not score" in last.message


def test_an_open_circuit_defers_without_spending_an_attempt() -> None:
    decision = fate(TASK, RewardEndpointError("paused", circuit_open=True, retry_after_s=12.5))
    assert decision == Retry(TASK, 12.5, counted=False)
    assert fate(TASK, RewardEndpointError("paused", circuit_open=True)) == Retry(TASK, DEFER_S, counted=False)


def test_permanent_failures_are_dropped_at_once() -> None:
    for exc in (RewardEndpointError("returned 1 scores for 3 completions"), InvalidArgument("too long")):
        decision = fate(TASK, exc)
        assert isinstance(decision, Drop) and decision.message == f"prompt p7 skipped: {exc}"
    crash = fate(TASK, RuntimeError("boom"))
    assert isinstance(crash, Drop) and "RuntimeError: boom" in crash.message
