"""CircuitBreaker: closed -> open after N transient failures in a row -> half-open trial -> closed or open."""

from __future__ import annotations

import pytest

from policyopt.workers.rollout.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_threshold_failures_in_a_row_only() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # the streak is broken
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow() and breaker.is_open()


def test_an_open_circuit_lets_one_trial_call_through_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now += 4
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(6)
    clock.now += 6
    assert breaker.state == "half-open" and not breaker.is_open()
    assert breaker.allow()  # the trial
    assert not breaker.allow() and breaker.is_open()  # only one at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_failed_trial_opens_the_circuit_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=5, cooldown_s=10, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open state
    assert breaker.state == "open" and breaker.retry_in() == pytest.approx(10)


def test_a_trial_that_tells_nothing_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)
