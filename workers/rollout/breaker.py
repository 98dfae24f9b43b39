"""A circuit breaker for one reward endpoint: stop calling an endpoint that keeps failing, try it again later.

States::

    closed     calls go through; ``threshold`` transient failures in a row open it
    open       calls fail fast (``allow()`` is False) for ``cooldown_s``
    half-open  after the cool-down one trial call goes through: success closes, failure opens again

Only transient failures (endpoint down, deadline) count; a wrong answer is the tenant's bug, not an outage.
Thread-safe; the clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

FAILURE_THRESHOLD = 5
"""Transient failures in a row that open the circuit."""
COOLDOWN_S = 30.0
"""How long an open circuit fails calls fast before one trial call."""


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = FAILURE_THRESHOLD,
        cooldown_s: float = COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.cooldown_s:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only the first caller gets True."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def is_open(self) -> bool:
        """True while calls would be refused (open, or half-open with its trial call in flight)."""
        with self._lock:
            state = self._state()
            return state == "open" or (state == "half-open" and self._trial_in_flight)

    def retry_in(self) -> float:
        """Seconds until the circuit lets a trial call through (0 when it is closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        """A transient failure: counts toward opening; a failed trial call opens the circuit again."""
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._trial_in_flight = False

    def release(self) -> None:
        """A call that ended without telling anything about the endpoint (a permanent error): if it was
        the trial call, let another one through."""
        with self._lock:
            self._trial_in_flight = False


__all__ = ["COOLDOWN_S", "FAILURE_THRESHOLD", "CircuitBreaker"]
