"""Scoring lanes: the rollout worker's reward calls on threads, at most ``concurrency`` per endpoint.

Each endpoint key (its address) has a lane: a FIFO of ``ScoreJob``s and up to ``concurrency`` daemon
threads that run them (started on demand, gone after ``IDLE_EXIT_S`` without work). A slow or hanging
endpoint fills its own lane only; ``saturated`` tells the worker to put that endpoint's new prompts back
instead of sampling them.

A job moves ``waiting -> running -> done``, or to ``returned`` when the worker gave its prompt back
(shutdown); ``finish`` lets exactly one of the job's thread and the worker act on its prompt.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from policyopt.core.types import PromptTask, RewardEndpointInfo, Run
from policyopt.workers.engines import Sample

log = logging.getLogger(__name__)

IDLE_EXIT_S = 30.0
BACKLOG_FACTOR = 2
"""A lane with more than ``BACKLOG_FACTOR * concurrency`` jobs waiting is saturated."""


@dataclass(eq=False)
class ScoreJob:
    """One sampled group waiting for its scores."""

    message_id: str
    task: PromptTask
    run: Run
    endpoint: RewardEndpointInfo
    prompt_ids: list[int]
    samples: list[Sample]
    greedy: Sample | None = None
    state: str = field(default="waiting")


class _Lane:
    def __init__(
        self, concurrency: int, lock: threading.Condition, run_job: Callable[[ScoreJob], None]
    ) -> None:
        self.concurrency = concurrency
        self.jobs: deque[ScoreJob] = deque()
        self.running = 0
        self.threads = 0
        self._cond = lock
        self._run_job = run_job

    def submit(self, job: ScoreJob) -> None:
        """Called with the lock held."""
        self.jobs.append(job)
        if self.threads < self.concurrency and self.threads - self.running < len(self.jobs):
            self.threads += 1
            threading.Thread(target=self._serve, name="score", daemon=True).start()
        self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                if not self.jobs:
                    self._cond.wait(IDLE_EXIT_S)
                if not self.jobs:
                    self.threads -= 1
                    return
                job = self.jobs.popleft()
                job.state = "running"
                self.running += 1
            try:
                self._run_job(job)
            except Exception:  # the job's prompt stays pending and is reclaimed; the lane goes on
                log.exception("scoring of prompt %s (run %s) failed", job.task.prompt_id, job.task.run_id)
            finally:
                with self._cond:
                    self.running -= 1
                    self._cond.notify_all()


class ScoringLanes:
    def __init__(self, concurrency: int, run_job: Callable[[ScoreJob], None]) -> None:
        self.concurrency = max(1, concurrency)
        self._run_job = run_job
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}

    def submit(self, key: str, job: ScoreJob) -> None:
        with self._cond:
            if key not in self._lanes:
                self._lanes[key] = _Lane(self.concurrency, self._cond, self._run_job)
            self._lanes[key].submit(job)

    def saturated(self, key: str) -> bool:
        with self._cond:
            lane = self._lanes.get(key)
            return lane is not None and len(lane.jobs) > BACKLOG_FACTOR * self.concurrency

    def outstanding(self) -> int:
        """Jobs waiting or running, over every lane."""
        with self._cond:
            return sum(len(lane.jobs) + lane.running for lane in self._lanes.values())

    def finish(self, job: ScoreJob) -> bool:
        """Called by the job's thread before it acts on the prompt; False when it was given back."""
        with self._cond:
            if job.state != "running":
                return False
            job.state = "done"
            return True

    def take_waiting(self) -> list[ScoreJob]:
        """Remove the jobs no thread has started, marked returned (for shutdown)."""
        with self._cond:
            taken = [job for lane in self._lanes.values() for job in lane.jobs]
            for lane in self._lanes.values():
                lane.jobs.clear()
            for job in taken:
                job.state = "returned"
            return taken

    def give_back(self, job: ScoreJob) -> bool:
        """Mark a running job returned; False when its thread already finished it."""
        with self._cond:
            if job.state in ("done", "returned"):
                return False
            job.state = "returned"
            return True


__all__ = ["ScoreJob", "ScoringLanes"]
