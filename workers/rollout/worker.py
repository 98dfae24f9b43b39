"""The rollout worker: prompts in, scored trajectory groups out.

For each claimed prompt: look up its run (prompts of runs that are not running are acked and dropped),
encode it with the chat template, sample ``group_size`` completions with the run's newest adapter
version, score the group with the run's RewardService, and queue the group while acking the prompt in
one transaction (``WorkQueue.complete_prompt``).

A prompt that fails (a bad reward endpoint, an unusable prompt) becomes an ERROR event on its run and
is acked, so it is not retried forever; the worker goes on with other prompts. Redis errors are not
per-prompt: the prompt stays pending and is picked up again once Redis answers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import redis
from opentelemetry import trace
from opentelemetry.trace import Span

from policyopt.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PolicyOptError,
    RewardEndpointError,
)
from policyopt.core.settings import Settings
from policyopt.core.telemetry import inject_context, span_from, tracer
from policyopt.core.types import (
    PromptTask,
    RewardEndpointInfo,
    Run,
    RunConfig,
    RunStatus,
    Trajectory,
    TrajectoryGroup,
)
from policyopt.models import ModelCatalog
from policyopt.state import AdapterStore, LocalAdapterStore
from policyopt.state.connection import connect
from policyopt.state.queue import WorkQueue, consumer_name
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms import MethodSpec, run_method
from policyopt.workers.engines import AdapterRef, RolloutEngine, Sample, SamplingParams, create_engine
from policyopt.workers.placement import configure_threads
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput

log = logging.getLogger(__name__)

MAX_CACHED_METHODS = 1024


class RolloutWorker:
    """Claims prompts from ``po:prompts`` and turns each into a scored ``TrajectoryGroup``."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        consumer: str | None = None,
        adapter_store: AdapterStore | None = None,
        max_engines: int = 1,
        batch_prompts: int = 4,
    ) -> None:
        self.settings = settings
        self.r = redis_client if redis_client is not None else connect(settings)
        self.queue = WorkQueue(
            self.r, claim_idle_ms=settings.claim_idle_ms, max_queued_prompts=settings.max_queued_prompts
        )
        self.store = RunStore(self.r)
        self.adapters = adapter_store or LocalAdapterStore(settings.adapter_root)
        self.rewards = RewardClient(settings)
        self.models = ModelCatalog.from_settings(settings)
        self.consumer = consumer or consumer_name("rollout")
        self.max_engines = max_engines
        self.batch_prompts = batch_prompts
        self._engines: OrderedDict[tuple[str, Path], RolloutEngine] = OrderedDict()
        self._methods: OrderedDict[str, MethodSpec] = OrderedDict()  # run -> its pinned method
        self.threads = configure_threads(settings.torch_threads)

    # -- loop ------------------------------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event) -> None:
        """Process prompts until ``stop_event`` is set; the prompts in hand are always finished first."""
        log.info("rollout worker %s started (%d torch threads)", self.consumer, self.threads)
        while not stop_event.is_set():
            try:
                self.process_one()
            except redis.RedisError as exc:
                log.warning("Redis is unavailable (%s); retrying in 1s", exc)
                stop_event.wait(1.0)
            except Exception:
                log.exception("rollout loop error; continuing")
                stop_event.wait(1.0)
        log.info("rollout worker %s stopped", self.consumer)

    def process_one(self, block_ms: int = 1000) -> int:
        """One claim round: up to ``batch_prompts`` prompts, sampled together per run; returns how many."""
        claimed = self.queue.claim_prompts(self.consumer, count=self.batch_prompts, block_ms=block_ms)
        by_run: dict[str, list[tuple[str, PromptTask]]] = {}
        for message_id, task in claimed:
            by_run.setdefault(task.run_id, []).append((message_id, task))
        for items in by_run.values():
            self.handle(items)
        return len(claimed)

    def handle(self, items: list[tuple[str, PromptTask]]) -> None:
        """Roll out claimed prompts of one run; queue each group and ack its prompt, or record why it failed."""
        run = self._running_run(items[0][1])
        if run is None:
            for message_id, task in items:
                self.queue.complete_prompt(message_id, task, None)
            return
        tasks = [task for _, task in items]
        with contextlib.ExitStack() as stack:
            spans = [
                stack.enter_context(span_from(t.trace, "rollout", run_id=t.run_id, prompt_id=t.prompt_id))
                for t in tasks
            ]
            with self._keep_claimed([message_id for message_id, _ in items]):
                try:
                    outcomes = self.rollout(run, tasks, spans)
                except redis.RedisError:
                    raise
                except Exception as exc:
                    outcomes = [exc] * len(tasks)
            for (message_id, task), span, outcome in zip(items, spans, outcomes, strict=True):
                group = None
                if isinstance(outcome, Exception):
                    span.record_exception(outcome)
                    self._record_failure(run, task, outcome)
                else:
                    group = outcome
                self.queue.complete_prompt(message_id, task, group)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self.rewards.close()

    # -- rollouts --------------------------------------------------------------------------------------
    def rollout(
        self, run: Run, tasks: list[PromptTask], spans: list[Span]
    ) -> list[TrajectoryGroup | Exception]:
        """Sample the prompts of one run in one batch with its newest adapter version; score each group.

        A failure that concerns one prompt (too long, its reward call) takes that prompt's place in the result;
        one that concerns them all (no endpoint, the engine) is raised.
        """
        config = run.config
        endpoint = self._endpoint(run)
        engine = self._engine(config)
        adapter = self._adapter(run)
        outcomes: list[TrajectoryGroup | Exception | list[int]] = [_encode(engine, t, config) for t in tasks]
        ready = [i for i, o in enumerate(outcomes) if isinstance(o, list)]
        prompt_ids_list = [cast(list[int], outcomes[i]) for i in ready]
        if ready:
            longest = max(len(ids) for ids in prompt_ids_list)
            params = _sampling_params(config, longest, engine.context_length)
            groups = engine.sample(prompt_ids_list, config.group_size, params, adapter)
            greedy: list[Sample | None] = [None] * len(ready)
            if self._method(run).needs_greedy_baseline:  # ReMax: a greedy rollout's reward as baseline
                greedy = list(engine.greedy(prompt_ids_list, params.max_new_tokens, adapter))
            for k, i in enumerate(ready):
                with trace.use_span(spans[i], end_on_exit=False):
                    outcomes[i] = self._group(
                        run, tasks[i], endpoint, prompt_ids_list[k], groups[k], greedy[k]
                    )
        return cast(list[TrajectoryGroup | Exception], outcomes)

    def _group(
        self,
        run: Run,
        task: PromptTask,
        endpoint: RewardEndpointInfo | None,
        prompt_ids: list[int],
        samples: list[Sample],
        greedy: Sample | None,
    ) -> TrajectoryGroup | Exception:
        """Score one prompt's samples (and greedy baseline) and package them; a reward failure is returned."""
        try:
            rewards = self._score(run, task, endpoint, [s.text for s in samples])
            baseline = self._score(run, task, endpoint, [greedy.text])[0] if greedy is not None else None
        except PolicyOptError as exc:
            return exc
        trajectories = [
            _trajectory(s, reward, run.version) for s, reward in zip(samples, rewards, strict=True)
        ]
        return TrajectoryGroup(
            run_id=run.run_id,
            group_id=f"{task.prompt_id}-{uuid.uuid4().hex[:8]}",
            prompt_id=task.prompt_id,
            prompt=task.prompt,
            prompt_ids=prompt_ids,
            trajectories=trajectories,
            adapter_version=run.version,
            metadata=task.metadata,
            baseline_reward=baseline,
            trace=inject_context(),
            attempt=task.attempt,
        )

    def _score(
        self, run: Run, task: PromptTask, endpoint: RewardEndpointInfo | None, completions: list[str]
    ) -> list[float]:
        if endpoint is None:  # the method learns from the teacher alone; there is nothing to score
            return [0.0] * len(completions)
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
            return self.rewards.score(endpoint, group)

    def _running_run(self, task: PromptTask) -> Run | None:
        try:
            run = self.store.get_run(task.run_id)
        except NotFound:
            log.warning("dropping prompt %s of unknown run %s", task.prompt_id, task.run_id)
            return None
        if run.status != RunStatus.RUNNING:
            log.info("dropping prompt %s: run %s is %s", task.prompt_id, run.run_id, run.status.value)
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
        """The engine for the run's base model, loaded once; the least recently used beyond max_engines closes."""
        model_dir = self.models.resolve(config.base_model)
        key = (config.engine, model_dir)
        if key not in self._engines:
            while len(self._engines) >= self.max_engines:
                _, old = self._engines.popitem(last=False)
                old.close()
            log.info("loading %s engine for %s", config.engine, model_dir)
            self._engines[key] = create_engine(
                config.engine,
                model_dir,
                device=self.settings.device,
                urls=self.settings.vllm_urls,
                # The newest version plus those a rollout may still lag behind by.
                max_loaded_adapters=config.max_staleness + 1,
            )
        self._engines.move_to_end(key)
        return self._engines[key]

    def _adapter(self, run: Run) -> AdapterRef | None:
        if run.version == 0:
            return None
        try:
            path = self.adapters.open_version(run.run_id, run.version)
        except NotFound as exc:
            raise FailedPrecondition(
                f"{exc}; the rollout worker must read the trainer's adapter store "
                f"(POLICYOPT_ADAPTER_STORE, here {self.settings.adapter_root})"
            ) from exc
        return AdapterRef(run_id=run.run_id, version=run.version, path=path)

    def _record_failure(self, run: Run, task: PromptTask, exc: Exception) -> None:
        if isinstance(exc, PolicyOptError):
            message = f"prompt {task.prompt_id} skipped: {exc}"
        else:
            message = f"prompt {task.prompt_id} skipped: rollout failed with {type(exc).__name__}: {exc}"
            log.exception("rollout of prompt %s (run %s) failed", task.prompt_id, run.run_id, exc_info=exc)
        log.warning("%s", message)
        self.store.record_error(run.run_id, message)

    @contextlib.contextmanager
    def _keep_claimed(self, message_ids: list[str]) -> Iterator[None]:
        """Touch the prompts while they are worked on, so no other worker takes them as abandoned."""
        done = threading.Event()
        period_s = max(0.05, self.settings.claim_idle_ms / 3000)

        def touch() -> None:
            while not done.wait(period_s):
                for message_id in message_ids:
                    with contextlib.suppress(redis.RedisError):
                        self.queue.touch_prompt(self.consumer, message_id)

        thread = threading.Thread(target=touch, name="touch-prompts", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def _sampling_params(config: RunConfig, prompt_len: int, context_length: int) -> SamplingParams:
    """The run's sampling, with max_new_tokens cut so prompt + completion fit the context."""
    room = max(1, context_length - prompt_len)
    return SamplingParams(
        max_new_tokens=min(config.max_new_tokens, room), temperature=config.temperature, top_p=config.top_p
    )


def _encode(engine: RolloutEngine, task: PromptTask, config: RunConfig) -> list[int] | Exception:
    """The prompt's token ids with the chat template, or why it cannot be rolled out."""
    prompt_ids = engine.encode_chat(task.prompt)
    if len(prompt_ids) >= engine.context_length:
        return InvalidArgument(
            f"the prompt is {len(prompt_ids)} tokens with the chat template and the model's context is "
            f"{engine.context_length}; shorten the prompt"
        )
    return prompt_ids


def _trajectory(sample: Sample, reward: float, version: int) -> Trajectory:
    return Trajectory(
        completion_ids=sample.completion_ids,
        sampler_logprobs=sample.sampler_logprobs,
        text=sample.text,
        reward=reward,
        finish_reason=sample.finish_reason,
        version=version,
    )


__all__ = ["RolloutWorker"]
