"""The rollout worker: prompts in, scored trajectory groups out.

The loop claims a batch of one run's prompts (``WorkQueue.claim_prompts`` takes turns between runs), looks
up the run (prompts of runs that are not running are acked and dropped), encodes them with the chat
template and samples ``group_size`` completions each with the run's newest adapter version. Each group is
then scored on the scoring lane of the run's reward endpoint (``scoring.ScoringLanes``: at most
``reward_concurrency`` calls in flight per endpoint) while the loop goes on with other runs; when its
scores arrive the group is queued and its prompt acked in one transaction (``WorkQueue.complete_prompt``).

Claimed prompts stay claimed while they wait: one thread touches every prompt in hand. When an endpoint's
lane is backed up or its circuit is open, newly claimed prompts of its runs go back for later without
being sampled, and at most ``max_pending_scores`` groups wait for scores in all.

A failed prompt follows ``retry``: a transient reward failure sends it back with backoff (up to
``reward_max_attempts`` rollouts), a permanent one becomes an ERROR event on its run and the prompt is
acked. Redis errors are not per-prompt: the prompt stays pending and is picked up again once Redis answers.
On shutdown the groups in hand are scored for up to ``shutdown_grace_s``; the rest go back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from typing import cast

import redis

from policyopt.core import metrics
from policyopt.core.errors import (
    NotFound,
    PolicyOptError,
    RewardEndpointError,
)
from policyopt.core.settings import Settings
from policyopt.core.telemetry import span_from, tracer
from policyopt.core.types import (
    PromptTask,
    RewardEndpointInfo,
    Run,
    RunConfig,
    RunStatus,
    TrajectoryGroup,
)
from policyopt.models import ModelCatalog
from policyopt.state import AdapterStore, LocalAdapterStore
from policyopt.state.connection import connect
from policyopt.state.evals import EvalStore
from policyopt.state.queue import POLL_S, WorkQueue, consumer_name
from policyopt.state.runs import RunStore
from policyopt.workers.adapter_refs import open_adapter
from policyopt.workers.algorithms import MethodSpec, run_method
from policyopt.workers.engines import AdapterRef, RolloutEngine, Sample
from policyopt.workers.placement import configure_threads
from policyopt.workers.rollout.breaker import COOLDOWN_S, FAILURE_THRESHOLD
from policyopt.workers.rollout.engine_cache import EngineCache
from policyopt.workers.rollout.evaluate import Evaluator
from policyopt.workers.rollout.groups import encode_prompt, package_group, sampling_params
from policyopt.workers.rollout.retry import DEFER_S, Retry, after_failure
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput
from policyopt.workers.rollout.reward_components import ScoredGroup
from policyopt.workers.rollout.scoring import ScoreJob, ScoringLanes

log = logging.getLogger(__name__)

MAX_CACHED_METHODS = 1024
MAX_PENDING_SCORES = 256
"""Groups waiting for scores in one worker, over all endpoints; the loop stops claiming beyond it."""
SHUTDOWN_GRACE_S = 10.0
FORGET_RUNS_EVERY_S = 30.0
"""How often the worker drops the metric series of runs that are no longer active."""

Sampled = tuple[list[int], list[Sample], Sample | None]  # prompt ids, the group's samples, a greedy one


class RolloutWorker:
    """Claims prompts run by run and turns each into a scored ``TrajectoryGroup``."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        consumer: str | None = None,
        adapter_store: AdapterStore | None = None,
        max_engines: int = 1,
        batch_prompts: int = 4,
        max_pending_scores: int = MAX_PENDING_SCORES,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
        breaker_threshold: int = FAILURE_THRESHOLD,
        breaker_cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self.settings = settings
        self.r = redis_client if redis_client is not None else connect(settings)
        self.queue = WorkQueue(
            self.r, claim_idle_ms=settings.claim_idle_ms, max_queued_prompts=settings.max_queued_prompts
        )
        self.store = RunStore(self.r)
        self.adapters = adapter_store or LocalAdapterStore(settings.adapter_root)
        self.rewards = RewardClient(
            settings, breaker_threshold=breaker_threshold, breaker_cooldown_s=breaker_cooldown_s
        )
        self.models = ModelCatalog.from_settings(settings)
        self.consumer = consumer or consumer_name("rollout")
        self.batch_prompts = batch_prompts
        self.max_pending_scores = max_pending_scores
        self.shutdown_grace_s = shutdown_grace_s
        self.lanes = ScoringLanes(settings.reward_concurrency, self._score_job)
        self.engines = EngineCache(settings, self.models, max_engines)
        self._methods: OrderedDict[str, MethodSpec] = OrderedDict()  # run -> its pinned method
        self._held: dict[str, PromptTask] = {}  # claimed prompts in hand, by message id
        self._jobs: dict[str, ScoreJob] = {}  # the held prompts that wait for scores
        self._held_changed = threading.Condition()
        self._toucher: threading.Thread | None = None
        self._closed = threading.Event()
        self.threads = configure_threads(settings.torch_threads)
        self.evaluator = Evaluator(
            settings=settings, consumer=self.consumer, runs=self.store, evals=EvalStore(self.r),
            adapters=self.adapters, rewards=self.rewards, engine_for=lambda run: self._engine(run.config),
            adapter_for=self._adapter, chunk_prompts=batch_prompts,
        )  # fmt: skip

    # -- loop ------------------------------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event) -> None:
        """Process prompts until ``stop_event`` is set, then finish or give back the prompts in hand."""
        log.info("rollout worker %s started (%d torch threads)", self.consumer, self.threads)
        forgot_at = time.monotonic()
        while not stop_event.is_set():
            try:
                self.process_one(block_ms=100)
                if time.monotonic() - forgot_at >= FORGET_RUNS_EVERY_S:
                    forgot_at = time.monotonic()
                    metrics.forget_inactive_runs(self.store.active_run_ids())
            except redis.RedisError as exc:
                metrics.redis_error("rollout_loop")
                log.warning("Redis is unavailable (%s); retrying in 1s", exc)
                stop_event.wait(1.0)
            except Exception:
                log.exception("rollout loop error; continuing")
                stop_event.wait(1.0)
        self.shutdown()
        log.info("rollout worker %s stopped", self.consumer)

    def process_one(self, block_ms: int = 1000) -> int:
        """One claim round: up to ``batch_prompts`` prompts of one run, sampled together and handed to the
        scoring lanes; returns how many were claimed (``wait_scored`` waits for their groups)."""
        if self.lanes.outstanding() >= self.max_pending_scores:
            time.sleep(POLL_S)
            return 0
        if self.evaluator.take_turn():  # held-out evaluation: every other round at most (evaluate.py)
            return 0
        claimed = self.queue.claim_prompts(self.consumer, count=self.batch_prompts, block_ms=block_ms)
        self._hold(claimed)
        by_run: dict[str, list[tuple[str, PromptTask]]] = {}
        for message_id, task in claimed:
            by_run.setdefault(task.run_id, []).append((message_id, task))
        for items in by_run.values():
            try:
                self.handle(items)
            except BaseException:
                self._release([m for m, _ in items if m not in self._jobs])  # pending: reclaimed later
                raise
        return len(claimed)

    def handle(self, items: list[tuple[str, PromptTask]]) -> None:
        """Roll out claimed prompts of one run and queue their groups for scoring; or put them back while
        the run's endpoint is backed up; or record why they failed."""
        run = self._running_run(items[0][1])
        if run is None:
            for message_id, task in items:
                self.queue.complete_prompt(message_id, task, None)
                self._release([message_id])
            return
        try:
            endpoint = self._endpoint(run)
        except PolicyOptError as exc:
            for message_id, task in items:
                self._fail(run, message_id, task, exc)
            return
        if endpoint is not None and self._backed_up(endpoint):
            delay_s = max(DEFER_S, self.rewards.breaker(endpoint).retry_in())
            for message_id, task in items:
                self.queue.delay_prompt(message_id, task, delay_s)
                self._release([message_id])
            return
        tasks = [task for _, task in items]
        with contextlib.ExitStack() as stack:
            spans = [
                stack.enter_context(span_from(t.trace, "rollout", run_id=t.run_id, prompt_id=t.prompt_id))
                for t in tasks
            ]
            try:
                outcomes = self.rollout(run, tasks)
            except redis.RedisError:
                raise
            except Exception as exc:
                outcomes = [exc] * len(tasks)
            for span, outcome in zip(spans, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    span.record_exception(outcome)
        for (message_id, task), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._fail(run, message_id, task, outcome)
            elif endpoint is None:  # the method learns from the teacher alone; there is nothing to score
                with span_from(task.trace, "package", run_id=task.run_id, prompt_id=task.prompt_id):
                    group = package_group(run, task, outcome[0], outcome[1], [0.0] * len(outcome[1]), None)
                self.queue.complete_prompt(message_id, task, group)
                self._release([message_id])
            else:
                job = ScoreJob(message_id, task, run, endpoint, *outcome)
                with self._held_changed:
                    self._jobs[message_id] = job
                self.lanes.submit(endpoint.address, job)

    def wait_scored(self, timeout_s: float = 120.0) -> bool:
        """Wait until every claimed prompt is finished (scored, retried or dropped); False on timeout."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: not self._held, timeout_s)

    def shutdown(self) -> None:
        """Give back the groups no lane started, wait ``shutdown_grace_s`` for the calls in flight, then give
        back the rest: each goes back to its run's queue (nothing is lost, no attempt is spent)."""
        for job in self.lanes.take_waiting():
            self._give_back(job)
        if not self.wait_scored(self.shutdown_grace_s):
            with self._held_changed:
                jobs = list(self._jobs.values())
            for job in jobs:
                if self.lanes.give_back(job):
                    self._give_back(job)

    def close(self) -> None:
        self.shutdown()
        self._closed.set()
        self.engines.close()
        self.rewards.close()

    # -- rollouts --------------------------------------------------------------------------------------
    def rollout(self, run: Run, tasks: list[PromptTask]) -> list[Sampled | Exception]:
        """Sample the prompts of one run in one batch with its newest adapter version.

        A failure that concerns one prompt (too long) takes that prompt's place in the result; one that
        concerns them all (the engine, the adapter) is raised.
        """
        config = run.config
        engine = self._engine(config)
        adapter = self._adapter(run)
        encoded = [encode_prompt(engine, t) for t in tasks]
        ready = [i for i, e in enumerate(encoded) if not isinstance(e, Exception)]
        prompt_ids_list = [cast(list[int], encoded[i]) for i in ready]
        outcomes: list[Sampled | Exception] = [
            e if isinstance(e, Exception) else (e, [], None) for e in encoded
        ]
        if ready:
            longest = max(len(ids) for ids in prompt_ids_list)
            params = sampling_params(config, longest, engine.context_length)
            started = time.monotonic()
            groups = engine.sample(prompt_ids_list, config.group_size, params, adapter)
            greedy: list[Sample | None] = [None] * len(ready)
            if self._method(run).needs_greedy_baseline:  # ReMax: a greedy rollout's reward as baseline
                greedy = list(engine.greedy(prompt_ids_list, params.max_new_tokens, adapter))
            tokens = sum(len(s.completion_ids) for group in groups for s in group)
            tokens += sum(len(g.completion_ids) for g in greedy if g is not None)
            metrics.record_rollout(run.run_id, tokens, time.monotonic() - started, len(groups))
            for k, i in enumerate(ready):
                outcomes[i] = (prompt_ids_list[k], groups[k], greedy[k])
        return outcomes

    def _score_job(self, job: ScoreJob) -> None:
        """On a lane thread: score one group, then queue it, retry its prompt or drop it."""
        task = job.task
        try:
            with span_from(task.trace, "score", run_id=task.run_id, prompt_id=task.prompt_id) as span:
                outcome: TrajectoryGroup | Exception
                try:
                    scored = self._score(job.run, task, job.endpoint, [s.text for s in job.samples])
                    baseline = None
                    if job.greedy is not None:
                        baseline = self._score(job.run, task, job.endpoint, [job.greedy.text]).totals[0]
                    outcome = package_group(
                        job.run, task, job.prompt_ids, job.samples, scored.totals, baseline, scored.components
                    )
                except Exception as exc:
                    span.record_exception(exc)
                    outcome = exc
            if not self.lanes.finish(job):
                return  # given back at shutdown
            if isinstance(outcome, Exception):
                self._fail(job.run, job.message_id, task, outcome)
            else:
                self.queue.complete_prompt(job.message_id, task, outcome)
        except redis.RedisError as exc:
            metrics.redis_error("complete_prompt")
            log.warning("prompt %s of run %s stays pending: Redis is unavailable (%s)", task.prompt_id,
                        task.run_id, exc)  # fmt: skip
        finally:
            self._release([job.message_id])

    def _backed_up(self, endpoint: RewardEndpointInfo) -> bool:
        """Whether new prompts for this endpoint should wait: its lane is full or its circuit is open."""
        return self.lanes.saturated(endpoint.address) or self.rewards.breaker(endpoint).is_open()

    def _score(
        self, run: Run, task: PromptTask, endpoint: RewardEndpointInfo | None, completions: list[str]
    ) -> ScoredGroup:
        if endpoint is None:
            return ScoredGroup(totals=[0.0] * len(completions))
        attributes: dict[str, str | int] = {"endpoint": endpoint.name, "completions": len(completions)}
        with tracer().start_as_current_span("reward_call", attributes=attributes):
            group = ScoreInput(
                run_id=run.run_id,
                prompt_id=task.prompt_id,
                prompt=task.prompt,
                completions=completions,
                metadata=task.metadata,
                adapter_version=run.version,
            )
            return self.rewards.score_group(endpoint, group)

    def _running_run(self, task: PromptTask) -> Run | None:
        try:
            run = self.store.get_run(task.run_id)
        except NotFound:
            log.warning("dropping prompt %s of unknown run %s", task.prompt_id, task.run_id)
            return None
        if run.status != RunStatus.RUNNING:
            log.info("dropping prompt %s: run %s is %s", task.prompt_id, run.run_id, run.status.value)
            metrics.forget_run(run.run_id)
            return None
        return run

    def _endpoint(self, run: Run) -> RewardEndpointInfo | None:
        """The run's reward endpoint; None for a method that ignores task rewards (pure OPD)."""
        name = run.config.reward_endpoint
        if name:
            return self.store.get_endpoint(run.tenant, name)
        if not self._method(run).uses_task_reward:
            return None
        raise RewardEndpointError(
            f"run {run.run_id} has no reward endpoint; create runs with reward_endpoint=NAME"
        )

    def _method(self, run: Run) -> MethodSpec:
        """The run's pinned method, rebuilt once per run (it never changes) and kept for the latest runs."""
        if run.run_id not in self._methods:
            self._methods[run.run_id] = run_method(run.config)
            while len(self._methods) > MAX_CACHED_METHODS:
                self._methods.popitem(last=False)
        self._methods.move_to_end(run.run_id)
        return self._methods[run.run_id]

    def _engine(self, config: RunConfig) -> RolloutEngine:
        return self.engines.engine_for(config)

    def _adapter(self, run: Run, version: int | None = None) -> AdapterRef | None:
        """The run's adapter at ``version`` (default: its newest); None for a fresh run's version 0 (the base)."""
        return open_adapter(self.adapters, run, version, reader="the rollout worker")

    def _fail(self, run: Run, message_id: str, task: PromptTask, exc: Exception) -> None:
        """Retry the prompt later (transient reward failure) or end it with an ERROR event."""
        decision = after_failure(
            task, exc, max_attempts=self.settings.reward_max_attempts,
            base_backoff_s=self.settings.reward_retry_backoff_s,
        )  # fmt: skip
        try:
            if isinstance(decision, Retry):
                self.queue.delay_prompt(message_id, decision.task, decision.delay_s)
                what = f"retry {decision.task.reward_attempts}" if decision.counted else "deferred"
                log.info("prompt %s of run %s: %s; %s in %.1fs", task.prompt_id, run.run_id, exc, what,
                         decision.delay_s)  # fmt: skip
                return
            if not isinstance(exc, PolicyOptError):
                log.exception(
                    "rollout of prompt %s (run %s) failed", task.prompt_id, run.run_id, exc_info=exc
                )
            log.warning("%s", decision.message)
            self.store.record_error(run.run_id, decision.message)
            self.queue.complete_prompt(message_id, task, None)
        finally:
            self._release([message_id])

    # -- prompts in hand -------------------------------------------------------------------------------
    def _hold(self, claims: list[tuple[str, PromptTask]]) -> None:
        with self._held_changed:
            self._held.update(claims)
            if self._toucher is None and claims:
                self._toucher = threading.Thread(target=self._touch_held, name="touch-prompts", daemon=True)
                self._toucher.start()

    def _release(self, message_ids: list[str]) -> None:
        with self._held_changed:
            for message_id in message_ids:
                self._held.pop(message_id, None)
                self._jobs.pop(message_id, None)
            self._held_changed.notify_all()

    def _give_back(self, job: ScoreJob) -> None:
        try:
            self.queue.delay_prompt(job.message_id, job.task, 0.0)
        except redis.RedisError as exc:  # it stays pending and is reclaimed after claim_idle_ms
            metrics.redis_error("give_back")
            log.warning("could not give back prompt %s (%s)", job.task.prompt_id, exc)
        self._release([job.message_id])

    def _touch_held(self) -> None:
        """Touch every prompt in hand a few times per ``claim_idle_ms``, so no other worker takes them."""
        period_s = max(0.05, self.settings.claim_idle_ms / 3000)
        while not self._closed.wait(period_s):
            with self._held_changed:
                held = list(self._held.items())
            if held:
                try:
                    self.queue.touch_prompts(self.consumer, held)
                except redis.RedisError:  # the loop logs Redis outages; the next touch tries again
                    metrics.redis_error("touch_prompts")


__all__ = ["RolloutWorker"]
