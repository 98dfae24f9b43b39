"""Restarting the children of ``policyopt up`` when they die: reaped, logged, counted, with backoff.

A child that exits (the server, a worker, or the embedded Valkey) is reaped at once and started again with
the same command, environment and ports (Valkey: the same port and data directory, so its append-only file
brings the queues back). The delay starts at ``initial_s`` and doubles with each quick death up to
``max_s``; a child that stayed up ``stable_s`` starts from ``initial_s`` again. A crash loop shows in the
log and in ``restarts`` and never takes the other children down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from policyopt.core.errors import PolicyOptError

if TYPE_CHECKING:
    from policyopt.cli.supervisor import Stack

log = logging.getLogger(__name__)

VALKEY = "valkey"


@dataclass
class Backoff:
    """Exponential restart delays of one child."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    """A child up this long counts as healthy: its next restart waits ``initial_s`` again."""
    next_s: float = field(default=0.0, init=False)

    def after_exit(self, uptime_s: float) -> float:
        """The delay before restarting a child that exited after ``uptime_s`` seconds up."""
        if self.next_s == 0.0 or uptime_s >= self.stable_s:
            self.next_s = self.initial_s
        delay = self.next_s
        self.next_s = min(self.max_s, delay * 2)
        return delay


def describe_exit(code: int) -> str:
    """``Popen.returncode`` in words: ``exit code 1`` or ``signal SIGKILL``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """A thread that polls the stack's children every ``interval_s`` and restarts the dead ones."""

    def __init__(self, stack: Stack, *, first_restart_s: float = 0.5, interval_s: float = 0.2):
        self.stack = stack
        self.restarts: dict[str, int] = {}
        """Restarts so far, by child name (``server``, ``rollout-0``, ``trainer``, ``valkey``)."""
        self._first_restart_s = first_restart_s
        self._interval_s = interval_s
        self._backoff: dict[str, Backoff] = {}
        self._started = dict.fromkeys(self._names(), time.monotonic())
        self._due: dict[str, float] = {}  # child -> when it is restarted (monotonic); the dead ones only
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="policyopt-supervisor", daemon=True)

    def _names(self) -> list[str]:
        return [*([VALKEY] if self.stack.valkey is not None else []), *self.stack.processes]

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop restarting; the children keep running (``Stack.stop`` ends them)."""
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def down(self) -> list[str]:
        """The children waiting for their restart now."""
        with self._lock:
            return sorted(self._due)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self.tick()
            except Exception:  # the supervisor must outlive any one failed restart
                log.exception("supervising the children failed; trying again")

    def tick(self) -> None:
        """One pass: reap and schedule the dead children, restart the ones whose delay is over."""
        now = time.monotonic()
        for name in self._names():
            if self._stopped.is_set():
                return
            due = self._due.get(name)
            if due is not None:
                if now >= due:
                    self._restart(name)
                continue
            code = self._poll(name)  # reaps: no zombie stays behind
            if code is None:
                continue
            uptime_s = now - self._started.get(name, now)
            delay = self._backoff_of(name).after_exit(uptime_s)
            log.warning(
                "%s exited with %s after %.1fs up; restarting it in %.1fs (restarts so far: %d)",
                name, describe_exit(code), uptime_s, delay, self.restarts.get(name, 0),
            )  # fmt: skip
            with self._lock:
                self._due[name] = now + delay

    def _backoff_of(self, name: str) -> Backoff:
        return self._backoff.setdefault(name, Backoff(initial_s=self._first_restart_s))

    def _poll(self, name: str) -> int | None:
        if name == VALKEY:
            assert self.stack.valkey is not None
            return self.stack.valkey.poll()
        return self.stack.processes[name].poll()

    def _restart(self, name: str) -> None:
        try:
            if name == VALKEY:
                assert self.stack.valkey is not None
                self.stack.valkey.start()
                pid = self.stack.valkey.pid
            else:
                pid = self.stack.respawn(name).pid
        except (PolicyOptError, OSError) as exc:
            delay = self._backoff_of(name).after_exit(0.0)
            log.error("restarting %s failed (%s); trying again in %.1fs", name, exc, delay)
            with self._lock:
                self._due[name] = time.monotonic() + delay
            return
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._started[name] = time.monotonic()
        with self._lock:
            del self._due[name]
        log.warning("restarted %s as pid %s (restart %d)", name, pid, self.restarts[name])
