"""EvalStore's writes are atomic: racing finishes decide as if in turn, a stop lands with its evaluation, and a
new run's eval prompts and baseline come with the run (real Valkey, real threads and connections)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from policyopt.core.types import (
    AdapterManifest,
    EvalConfig,
    EvalPrompt,
    EventKind,
    PromotionConfig,
    Run,
    RunConfig,
    RunStatus,
    from_json,
)
from policyopt.state.evals import (
    EVAL_TASKS,
    EvalStore,
    EvalTask,
    PromotionDecision,
    PromotionRule,
    PromotionState,
)
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.promotion import decide

BEATS_BEST = PromotionConfig(rule="beats_best")
MEANS = {0: 0.3, 2: 0.5, 4: 0.7}


def _run_with_baseline(r: redis.Redis, promotion: PromotionConfig = BEATS_BEST) -> str:
    """A run whose version 0 scored ``MEANS[0]`` and whose versions 2 and 4 are committed, not yet evaluated."""
    runs = RunStore(r)
    run = runs.create_run("t", RunConfig(base_model="tiny", eval=EvalConfig(every=2), promotion=promotion))
    for version in (2, 4):
        manifest = AdapterManifest(run_id=run.run_id, version=version, step=version, base_model="tiny",
                                   method="grpo")  # fmt: skip
        runs.commit_step(WorkQueue(r), manifest, [])
    _finish(r, run.run_id, 0)
    return run.run_id


def _rule(promotion: PromotionConfig, version: int) -> PromotionRule:
    return lambda state: decide(promotion, version, MEANS[version], state)


def _finish(r: redis.Redis, run_id: str, version: int, rule: PromotionRule | None = None) -> None:
    EvalStore(r).finish(RunStore(r), run_id, version, {"eval/mean": MEANS[version]},
                        rule or _rule(BEATS_BEST, version))  # fmt: skip


def _outcome(r: redis.Redis, run_id: str) -> tuple[PromotionState, list[int]]:
    """The promotion state and the versions promoted, by their PROMOTION events."""
    events = RunStore(r).read_events(run_id)
    return EvalStore(r).promotion_state(run_id), [e.version for e in events if e.kind == EventKind.PROMOTION]


@pytest.mark.parametrize("first", [4, 2])
def test_two_workers_finishing_two_versions_at_once_promote_as_if_one_finished_first(
    fresh_redis: redis.Redis, first: int
) -> None:
    run_id = _run_with_baseline(fresh_redis)
    both_read = threading.Barrier(2, timeout=10)

    def racing_rule(version: int) -> PromotionRule:
        calls = []

        def rule(state: PromotionState) -> PromotionDecision:
            calls.append(state)
            if len(calls) == 1:  # the first try: both workers have read the state before either writes
                both_read.wait()
                if version != first:
                    time.sleep(0.3)  # and ``first`` writes first
            return _rule(BEATS_BEST, version)(state)

        return rule

    connections = [redis.Redis(connection_pool=redis.ConnectionPool(**fresh_redis.connection_pool.connection_kwargs))
                   for _ in range(2)]  # fmt: skip
    errors: list[BaseException] = []

    def worker(r: redis.Redis, version: int) -> None:
        try:
            _finish(r, run_id, version, racing_rule(version))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c, v)) for c, v in zip(connections, (2, 4), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors and not any(t.is_alive() for t in threads)

    in_turn = _run_with_baseline(fresh_redis)
    for version in (first, 6 - first):
        _finish(fresh_redis, in_turn, version)
    assert _outcome(fresh_redis, run_id) == _outcome(fresh_redis, in_turn)
    state, promoted = _outcome(fresh_redis, run_id)
    assert state.promoted == 4 and state.promoted_best == 0.7 and state.best_version == 4
    assert promoted == ([4] if first == 4 else [2, 4])  # v2 does not beat v4's 0.7 once v4 is promoted
    versions = {m.version: m for m in RunStore(fresh_redis).list_versions(run_id)}
    assert versions[4].promoted and versions[2].promoted == (first == 2)
    for connection in connections:
        connection.close()


def test_a_stopping_evaluation_completes_the_run_in_the_same_transaction(fresh_redis: redis.Redis) -> None:
    stop_at = PromotionConfig(rule="beats_best", stop_at_metric=0.6)
    run_id = _run_with_baseline(fresh_redis, stop_at)
    runs, watched = RunStore(fresh_redis), redis.Redis(connection_pool=fresh_redis.connection_pool)
    seen: list[tuple[bool, str]] = []
    done = threading.Event()

    def watch() -> None:  # reads the eval result and the status in one MULTI, again and again
        while not done.is_set():
            with watched.pipeline(transaction=True) as pipe:
                pipe.hget(f"po:run:{run_id}:adapters", "4")
                pipe.hget(f"po:run:{run_id}", "data")
                manifest, data = pipe.execute()
            seen.append((bool(from_json(AdapterManifest, manifest).eval),
                         from_json(Run, data).status == RunStatus.COMPLETED))  # fmt: skip

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.05)
    _finish(fresh_redis, run_id, 4, _rule(stop_at, 4))
    time.sleep(0.05)
    done.set()
    watcher.join(timeout=10)
    assert (True, True) in seen and (True, False) not in seen  # never the result without the status
    run = runs.get_run(run_id)
    assert run.status == RunStatus.COMPLETED and "stop_at_metric 0.6" in run.error
    assert run_id not in runs.active_run_ids()
    kinds = [(e.kind, e.version) for e in runs.read_events(run_id)][-3:]
    assert kinds == [(EventKind.EVAL, 4), (EventKind.PROMOTION, 4), (EventKind.STATUS, 0)]


def test_a_stopping_evaluation_of_a_cancelled_run_leaves_it_cancelled(fresh_redis: redis.Redis) -> None:
    stop_at = PromotionConfig(rule="beats_best", stop_at_metric=0.6)
    run_id = _run_with_baseline(fresh_redis, stop_at)
    runs = RunStore(fresh_redis)
    runs.set_status(run_id, RunStatus.CANCELLED)
    _finish(fresh_redis, run_id, 4, _rule(stop_at, 4))
    assert runs.get_run(run_id).status == RunStatus.CANCELLED
    assert [e.kind for e in runs.read_events(run_id)].count(EventKind.STATUS) == 2  # running, cancelled


def test_a_new_run_comes_with_its_eval_prompts_baseline_and_version_zero_or_not_at_all(
    fresh_redis: redis.Redis,
) -> None:
    runs, evals = RunStore(fresh_redis), EvalStore(fresh_redis)
    observer = redis.Redis(connection_pool=fresh_redis.connection_pool)
    partial: list[str] = []
    done = threading.Event()

    def observe() -> None:  # every run it sees already has its prompts, baseline task and version 0
        while not done.is_set():
            with observer.pipeline(transaction=True) as pipe:
                pipe.keys("po:run:run-*:eval:prompts")
                pipe.smembers("po:tenant:t:runs")
                pipe.xlen(EVAL_TASKS)
                pipe.keys("po:run:run-*:adapters")
                prompts, created, tasks, indexed = pipe.execute()
            if not (len(prompts) == len(created) == tasks == len(indexed)):
                partial.append(
                    f"{len(created)} runs, {len(prompts)} prompt lists, {tasks} tasks, {len(indexed)} v0"
                )

    thread = threading.Thread(target=observe)
    thread.start()
    config = RunConfig(base_model="tiny", init_adapter="upload:x", eval=EvalConfig(every=3))
    created = []
    for _ in range(30):
        run_id = runs.new_run_id()
        version_zero = AdapterManifest(run_id=run_id, version=0, step=0, base_model="tiny", method="grpo",
                                       parent="upload:x")  # fmt: skip
        created.append(runs.create_run("t", config, run_id=run_id, version_zero=version_zero,
                                       eval_prompts=[EvalPrompt("1 + 1?"), EvalPrompt("2 + 2?")]))  # fmt: skip
    done.set()
    thread.join(timeout=10)
    assert not partial, partial[:3]
    run = created[-1]
    assert [p.text for p in evals.prompts(run.run_id)] == ["1 + 1?", "2 + 2?"]
    assert [t for t in evals.queued_tasks() if t.run_id == run.run_id] == [EvalTask(run.run_id, 0)]
    assert runs.get_version(run.run_id, 0).parent == "upload:x"
    assert [e.kind for e in runs.read_events(run.run_id)] == [EventKind.STATUS]


def test_a_run_that_does_not_evaluate_keeps_its_eval_prompts_without_a_baseline(
    fresh_redis: redis.Redis,
) -> None:
    runs, evals = RunStore(fresh_redis), EvalStore(fresh_redis)
    run = runs.create_run("t", RunConfig(base_model="tiny"), eval_prompts=[EvalPrompt("1 + 1?")])
    assert evals.prompt_count(run.run_id) == 1 and evals.queued_tasks() == []
