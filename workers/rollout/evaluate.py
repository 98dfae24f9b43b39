"""Held-out evaluation in the rollout worker: one chunk of one version's eval prompts per turn.

The worker's loop alternates between a claim of training prompts and an evaluation turn
(``Evaluator.take_turn``), so evaluations take at most every other round of a worker, and each round
samples at most ``chunk_prompts`` prompts: an evaluation never holds a worker longer than a training
batch, and the evaluations of several runs take turns in ``po:evals:tasks`` (``state/evals.py``).

A claimed task stays pending until its chunk's rewards are recorded (one MULTI with the ack and the task
for the rest), and is touched while the chunk runs; a worker that dies mid-chunk leaves it to another
worker after ``claim_idle_ms``. A transient reward failure puts the task back with backoff
(``retry.next_try``, the prompts' policy: an open circuit waits without spending an attempt) and the
evaluation is given up, with an ERROR event, only after ``reward_max_attempts`` failed attempts.

A turn samples ``eval.samples`` completions per prompt with the evaluated version (greedy when
``eval.temperature`` is 0: one completion, its reward counted ``samples`` times) and scores the chunk's
prompts concurrently with ``eval.reward_endpoint`` or the run's endpoint (on the loop's thread: a turn
lasts one sampling plus one reward call). When a version's last chunk is scored, the metrics
(``workers/promotion.eval_metrics``) become an EVAL event and the version manifest's ``eval``; the run's
promotion rule may promote it (PROMOTION event) or end the run (COMPLETED, the reason in the STATUS event),
all in one guarded MULTI (``EvalStore.finish``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis

from policyopt.core.errors import NotFound, PolicyOptError, RewardEndpointError
from policyopt.core.settings import Settings
from policyopt.core.types import AdapterManifest, EvalPrompt, EventKind, Run, RunEvent, RunStatus, to_json
from policyopt.state import AdapterStore, RunStore
from policyopt.state.adapter_manifest import MANIFEST_FILE, fsync_path
from policyopt.state.evals import ClaimedEval, EvalStore, EvalTask
from policyopt.workers.engines import AdapterRef, RolloutEngine
from policyopt.workers.promotion import decide, eval_metrics
from policyopt.workers.rollout.groups import sampling_params
from policyopt.workers.rollout.retry import next_try
from policyopt.workers.rollout.reward_client import RewardClient, ScoreInput

log = logging.getLogger(__name__)

EngineFor = Callable[[Run], RolloutEngine]
AdapterFor = Callable[[Run, int], AdapterRef | None]


class Evaluator:
    """Takes eval chunks from ``po:evals:tasks`` for a rollout worker (module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        consumer: str,
        runs: RunStore,
        evals: EvalStore,
        adapters: AdapterStore,
        rewards: RewardClient,
        engine_for: EngineFor,
        adapter_for: AdapterFor,
        chunk_prompts: int,
    ) -> None:
        self.settings, self.consumer = settings, consumer
        self.runs, self.evals, self.adapters, self.rewards = runs, evals, adapters, rewards
        self.engine_for, self.adapter_for = engine_for, adapter_for
        self.chunk_prompts = max(1, chunk_prompts)
        self._eval_turn = False

    def take_turn(self) -> bool:
        """Every other call, run one eval chunk; True when it did (the caller skips its claim then)."""
        self._eval_turn = not self._eval_turn
        return self._eval_turn and self.run_chunk()

    def run_chunk(self) -> bool:
        """Sample and score the next chunk of the first queued evaluation; False when none is queued."""
        claimed = self.evals.claim(self.consumer, self.settings.claim_idle_ms)
        if claimed is None:
            return False
        try:
            run = self.runs.get_run(claimed.task.run_id)
        except NotFound:
            self.evals.ack(claimed)
            return True
        if run.status in (RunStatus.CANCELLED, RunStatus.FAILED):  # a COMPLETED run's last versions still are
            self.evals.ack(claimed)
            return True
        with self._kept(claimed):
            try:
                self._advance(run, claimed)
            except redis.RedisError:
                raise  # not this evaluation's fault: the task stays pending and is taken again
            except Exception as exc:  # one evaluation's failure (endpoint, a corrupt adapter) ends it alone
                self._fail(run, claimed, exc)
        return True

    def _advance(self, run: Run, claimed: ClaimedEval) -> None:
        task = claimed.task
        prompts = self.evals.prompts(run.run_id)
        chunk = prompts[task.next_prompt : task.next_prompt + self.chunk_prompts]
        rewards = self._rewards(run, task.version, chunk)
        following = task.next_prompt + len(chunk)
        if chunk and following < len(prompts):
            self.evals.advance(claimed, rewards, EvalTask(run.run_id, task.version, following))
        else:  # the last chunk: its rewards, then the outcome and the ack in one MULTI (``finish``)
            self.evals.record_rewards(task, rewards)
            self._finish(run, task.version, claimed)

    def _fail(self, run: Run, claimed: ClaimedEval, exc: Exception) -> None:
        """Put the task back with backoff (a transient reward failure), or end the evaluation with an
        ERROR event (a permanent one, or the ``reward_max_attempts``-th transient one)."""
        task, settings = claimed.task, self.settings
        backoff = next_try(exc, task.reward_attempts, max_attempts=settings.reward_max_attempts,
                           base_backoff_s=settings.reward_retry_backoff_s)  # fmt: skip
        if backoff is not None:
            retried = dataclasses.replace(task, reward_attempts=backoff.attempts)
            self.evals.delay(claimed, retried, backoff.delay_s)
            log.info("run %s: eval of version %d: %s; %s in %.1fs", run.run_id, task.version, exc,
                     f"retry {backoff.attempts}" if backoff.counted else "deferred", backoff.delay_s)  # fmt: skip
            return
        if not isinstance(exc, PolicyOptError):
            log.exception("evaluation of %s v%d failed", run.run_id, task.version, exc_info=exc)
        if isinstance(exc, RewardEndpointError) and exc.transient:
            message = (
                f"the evaluation of version {task.version} was given up after {task.reward_attempts + 1} "
                f"attempts whose reward call failed (the server's POLICYOPT_REWARD_MAX_ATTEMPTS is "
                f"{settings.reward_max_attempts}): {exc}; bring the endpoint back for the next evaluation"
            )
        else:
            message = f"the evaluation of version {task.version} failed and is skipped: {_reason(exc)}"
        pipe = self.runs.r.pipeline(transaction=True)
        self.runs.add_event(RunEvent(run_id=run.run_id, kind=EventKind.ERROR, message=message), pipe)
        self.evals.ack(claimed, pipe)
        pipe.execute()

    @contextlib.contextmanager
    def _kept(self, claimed: ClaimedEval) -> Iterator[None]:
        """Touch the claimed task a few times per ``claim_idle_ms`` while its chunk runs."""
        done = threading.Event()

        def touch() -> None:
            while not done.wait(max(0.05, self.settings.claim_idle_ms / 3000)):
                with contextlib.suppress(redis.RedisError):  # the loop reports Redis outages
                    self.evals.touch(self.consumer, claimed)

        toucher = threading.Thread(target=touch, name="touch-eval", daemon=True)
        toucher.start()
        try:
            yield
        finally:
            done.set()
            toucher.join()

    def _rewards(self, run: Run, version: int, prompts: Sequence[EvalPrompt]) -> list[list[float]]:
        """``eval.samples`` rewards per prompt, sampled with ``version`` and scored."""
        if not prompts:
            return []
        spec = run.config.eval
        endpoint = self.runs.get_endpoint(run.tenant, spec.reward_endpoint or run.config.reward_endpoint)
        breaker = self.rewards.breaker(endpoint)
        if breaker.is_open():  # not worth sampling: wait for the circuit without spending an attempt
            raise RewardEndpointError(
                f"reward endpoint {endpoint.name!r} at {endpoint.address} is failing; calls to it pause",
                circuit_open=True, retry_after_s=breaker.retry_in(),
            )  # fmt: skip
        engine = self.engine_for(run)
        adapter = self.adapter_for(run, version)
        encoded = [engine.encode_chat(p.text) for p in prompts]
        params = sampling_params(run.config, max(len(ids) for ids in encoded), engine.context_length)
        if spec.temperature == 0:
            greedy = engine.greedy(encoded, params.max_new_tokens, adapter)
            texts = [[sample.text] for sample in greedy]
        else:
            params = dataclasses.replace(params, temperature=spec.temperature)
            texts = [
                [s.text for s in group] for group in engine.sample(encoded, spec.samples, params, adapter)
            ]
        groups = [
            ScoreInput(run_id=run.run_id, prompt_id=f"eval-v{version}-{i}", prompt=prompt.text,
                       completions=completions, metadata=prompt.metadata, adapter_version=version)
            for i, (prompt, completions) in enumerate(zip(prompts, texts, strict=True))
        ]  # fmt: skip
        # the chunk's groups are scored at once (a chunk holds a batch), so a slow judge costs one call's time
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="eval-score") as pool:
            scored = list(pool.map(lambda group: self.rewards.score(endpoint, group), groups))
        return [scores * spec.samples if spec.temperature == 0 else scores for scores in scored]

    def _finish(self, run: Run, version: int, claimed: ClaimedEval) -> None:
        """Metrics, promotion and stop conditions of a version whose every eval prompt is scored."""
        config = run.config
        metrics = eval_metrics(self.evals.rewards(run.run_id, version), config.eval.success_threshold)
        manifest, decision = self.evals.finish(
            self.runs, run.run_id, version, metrics,
            lambda state: decide(config.promotion, version, metrics["eval/mean"], state), claimed=claimed,
        )  # fmt: skip
        if manifest is not None:
            self._rewrite_manifest(manifest)
        log.info("run %s: eval of version %d: %s%s%s", run.run_id, version, metrics,
                 " (promoted)" if decision.promoted else "",
                 f" (stops: {decision.stop_reason})" if decision.stop_reason else "")  # fmt: skip

    def _rewrite_manifest(self, manifest: AdapterManifest) -> None:
        """The version directory's manifest.json with eval and promoted, replaced atomically (temp + rename)."""
        try:
            directory = self.adapters.open_version(manifest.run_id, manifest.version)
        except NotFound:
            return  # deleted meanwhile: the index holds the record
        tmp = directory / f".{MANIFEST_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(to_json(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / MANIFEST_FILE)
        fsync_path(directory)


def _reason(exc: Exception) -> str:
    """What the tenant reads: our own errors' messages; for others only their type (details go to the log)."""
    return (
        str(exc)
        if isinstance(exc, PolicyOptError)
        else f"{type(exc).__name__} (see the rollout worker's log)"
    )


__all__ = ["Evaluator"]
