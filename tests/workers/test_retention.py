"""Which versions retention deletes (the rule in ``workers/train/retention.py``)."""

from __future__ import annotations

from policyopt.core.types import AdapterManifest, EvalConfig, RetentionConfig, Run, RunConfig
from policyopt.workers.train.retention import trainer_states_to_delete, versions_to_delete


def _run(keep: int, every: int = 0, staleness: int = 1, states: int = 0) -> Run:
    config = RunConfig(
        base_model="tiny",
        max_staleness=staleness,
        eval=EvalConfig(every=every),
        retention=RetentionConfig(keep_versions=keep, keep_trainer_states=states),
    )
    return Run(run_id="run-0123456789ab", tenant="a", config=config)


def _versions(
    n: int, promoted: tuple[int, ...] = (), evaluated: tuple[int, ...] = ()
) -> list[AdapterManifest]:
    return [
        AdapterManifest(
            run_id="r",
            version=v,
            step=v,
            base_model="tiny",
            method="grpo",
            promoted=v in promoted,
            eval={"eval/mean": 0.0} if v in evaluated else {},
        )  # fmt: skip
        for v in range(0, n + 1)
    ]


def test_keeps_the_newest_unpromoted_the_promoted_and_those_rollouts_may_use() -> None:
    # versions 0..10, newest 10, staleness 1 (9 and 10 may be sampled), 3 promoted; keep 2 of the rest
    doomed = versions_to_delete(_run(keep=2), _versions(10, promoted=(3,)), newest=10)
    assert doomed == [1, 2, 4, 5, 6]  # 7, 8 kept; 3 promoted; 9, 10 in use; 0 the lineage root


def test_zero_keeps_everything_and_pending_evaluations_are_kept() -> None:
    assert versions_to_delete(_run(keep=0), _versions(10), newest=10) == []
    # every 2: 2 and 6 evaluated, 4 and 8 still waiting for their evaluation
    doomed = versions_to_delete(_run(keep=1, every=2), _versions(10, evaluated=(2, 6)), newest=10)
    assert doomed == [1, 2, 3, 5, 6]  # 7 is the one kept; 4, 8 pending; 9, 10 in use


def test_trainer_states_beyond_the_newest_kept() -> None:
    assert trainer_states_to_delete(_run(keep=0, states=1), [3, 4, 5]) == [3, 4]
    assert trainer_states_to_delete(_run(keep=0, states=0), [3, 4, 5]) == []
