"""Many runs in one trainer: fair turns, one shared base, eviction under a memory budget, failures that
stay with their run, and least-loaded placement across trainers (real Valkey, tiny model, real torch)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from support.trainer import StandInUpdater, TrainerEnv
from transformers import AutoModelForCausalLM

from policyopt.core.types import EventKind, MethodChoice, Run, RunStatus, TrajectoryGroup
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.placement import Placement
from policyopt.workers.train import policy
from policyopt.workers.train.session import Updater, build_updater
from policyopt.workers.train.worker import TrainerWorker


def _version(env: TrainerEnv, run: Run) -> int:
    return RunStore(env.r).get_run(run.run_id).version


def _passes(worker: TrainerWorker, done: Callable[[], bool], max_passes: int = 200) -> list[str]:
    """Scheduling passes until ``done``; the run id trained by each pass that committed a step."""
    trained: list[str] = []
    for _ in range(max_passes):
        if done():
            return trained
        before = {r: worker.runs.get_run(r).version for r in worker.runs.active_run_ids()}
        if worker._train_active_runs():
            trained += [r for r, v in before.items() if worker.runs.get_run(r).version > v]
    raise AssertionError(f"not done after {max_passes} passes (trained {trained})")


def _errors(env: TrainerEnv, run: Run) -> list[str]:
    return [e.message for e in RunStore(env.r).read_events(run.run_id) if e.kind == EventKind.ERROR]


def test_six_runs_in_one_trainer_all_train_and_take_turns(trainer_env: TrainerEnv) -> None:
    runs = [trainer_env.create_run(seed=i) for i in range(6)]
    for run in runs:
        trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    trained = _passes(worker, lambda: all(_version(trainer_env, r) >= 2 for r in runs))

    assert [_version(trainer_env, r) for r in runs] == [2] * 6  # the old trainer held 4 runs at most
    assert sorted(trained[:6]) == sorted(r.run_id for r in runs)  # every run once before any twice
    assert sorted(trained[6:]) == sorted(r.run_id for r in runs)
    assert len(worker.pool.bases) == 1


def test_two_runs_share_one_base_and_publish_their_own_flat_adapters(
    trainer_env: TrainerEnv, tmp_path: Path
) -> None:
    first, second = trainer_env.create_run(seed=1), trainer_env.create_run(seed=2)
    for run in (first, second):
        trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()
    _passes(worker, lambda: _version(trainer_env, first) == 1 and _version(trainer_env, second) == 1)

    one, two = worker._sessions[first.run_id], worker._sessions[second.run_id]
    assert len(worker.pool.bases) == 1 and one.model is two.model and one.adapter != two.adapter
    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    published = {}
    for session in (one, two):
        path = store.open_version(session.run.run_id, 1, verify=True)
        assert sorted(p.name for p in path.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "manifest.json",
        ]
        weights = load_file(str(path / "adapter_model.safetensors"))
        expected = get_peft_model_state_dict(session.model, adapter_name=session.adapter)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in weights)
        loaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(trainer_env.model_dir), str(path)
        )
        assert all(torch.equal(v, weights[k]) for k, v in get_peft_model_state_dict(loaded).items())
        published[session.run.run_id] = weights
    assert any(not torch.equal(published[first.run_id][k], published[second.run_id][k]) for k in weights)

    # Same keys, config and initial weights as the single-adapter model (get_peft_model) made before.
    reference, _pad = policy.load_policy(
        first.config, Placement(torch.device("cpu"), torch.float32), worker.models
    )
    reference.save_pretrained(str(tmp_path / "reference"))
    assert load_file(str(tmp_path / "reference" / "adapter_model.safetensors")).keys() == weights.keys()
    reference_config = json.loads((tmp_path / "reference" / "adapter_config.json").read_text())
    published_config = json.loads((path / "adapter_config.json").read_text())
    for config in (reference_config, published_config):  # a set in peft: its order varies by process
        config["target_modules"] = sorted(config["target_modules"])
    assert published_config == reference_config
    entry = worker.pool.attach(first.config, "probe")
    fresh = get_peft_model_state_dict(entry.model, adapter_name="probe")
    initial = get_peft_model_state_dict(reference)
    assert all(torch.equal(fresh[k], initial[k]) for k in initial)
    worker.pool.detach(entry, "probe")


def test_a_run_evicted_under_a_tiny_memory_budget_resumes_at_its_version_with_its_optimizer(
    trainer_env: TrainerEnv,
) -> None:
    first, second = (trainer_env.create_run(seed=seed, max_staleness=8) for seed in (1, 2))
    for run in (first, second):
        trainer_env.push_groups(run, 6)
    worker = trainer_env.worker(memory_budget_mb=0)  # only the session training now stays

    trained = _passes(
        worker, lambda: _version(trainer_env, first) == 3 and _version(trainer_env, second) == 3
    )

    assert sorted(trained) == sorted([first.run_id, second.run_id] * 3)
    (kept,) = list(worker._sessions)  # the other was evicted after the last step
    evicted = next(run for run in (first, second) if run.run_id != kept)
    assert worker.leases.holds(evicted.run_id)  # sticky: it keeps its lease while evicted
    trainer_env.push_groups(evicted, 2, adapter_version=3)
    _passes(worker, lambda: _version(trainer_env, evicted) == 4)
    session = worker._sessions[evicted.run_id]
    assert isinstance(session.updater, StandInUpdater) and session.updater.loaded_state is not None
    optimizer_state = session.updater.loaded_state["optimizer"]
    assert isinstance(optimizer_state, dict) and optimizer_state["state"]  # Adam moments came back
    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    assert store.list_versions(evicted.run_id) == [1, 2, 3, 4]
    assert list(worker._sessions) == [evicted.run_id]
    assert worker._sessions.memory_bytes() > worker.pool.base_bytes() > 0


def test_a_run_whose_lora_targets_match_nothing_fails_while_another_keeps_training(
    trainer_env: TrainerEnv,
) -> None:
    bad = trainer_env.create_run(lora_target_modules=("no_such_module",))
    good = trainer_env.create_run()
    trainer_env.push_groups(bad, 4)
    trainer_env.push_groups(good, 4)
    worker = trainer_env.worker()

    _passes(worker, lambda: _version(trainer_env, good) == 2)

    failed = RunStore(trainer_env.r).get_run(bad.run_id)
    assert failed.status == RunStatus.FAILED
    assert "['no_such_module'] match no module" in failed.error and "q_proj" in failed.error
    assert any("no_such_module" in m for m in _errors(trainer_env, bad))
    assert not worker.leases.holds(bad.run_id) and bad.run_id not in worker._sessions


class _PacedUpdater:
    """The real updater, with a pause per optimizer step and a signal once a step is under way."""

    def __init__(self, inner: Updater, started: threading.Event, pause_s: float) -> None:
        self.inner, self.started, self.pause_s = inner, started, pause_s

    @property
    def critic(self) -> torch.nn.Module | None:
        return self.inner.critic

    @property
    def last_warnings(self) -> Sequence[object]:
        return self.inner.last_warnings

    def step(
        self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        def paced() -> bool:
            self.started.set()
            time.sleep(self.pause_s)
            return should_continue() if should_continue is not None else True

        return self.inner.step(groups, should_continue=paced)

    def state_dict(self) -> dict[str, object]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.inner.load_state_dict(state)


def _costly() -> MethodChoice:
    return MethodChoice("grpo", trajectory_side={"epochs": 16})  # the most epochs a run may ask for


def test_a_run_with_the_costliest_step_does_not_hold_back_a_cheap_one(trainer_env: TrainerEnv) -> None:
    costly = trainer_env.create_run(method=_costly(), learning_rate=1e-3, group_size=8, max_staleness=1000)
    cheap = trainer_env.create_run(learning_rate=1e-3, max_staleness=1000)
    trainer_env.push_groups(costly, 6)
    trainer_env.push_groups(cheap, 80)
    worker = trainer_env.worker(updater_factory=build_updater)

    trained = _passes(worker, lambda: _version(trainer_env, costly) == 3)

    # Bound (start-time fair queuing): while both are ready, their trainer seconds differ by at most one
    # turn, so the cheap run trains at least once between two costly steps, and here several times.
    assert _version(trainer_env, cheap) < 40  # it never ran out of groups
    costly_turns = [i for i, r in enumerate(trained) if r == costly.run_id]
    assert all(b - a >= 2 for a, b in zip(costly_turns, costly_turns[1:], strict=False))
    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    costly_step_s = max(
        store.read_manifest(costly.run_id, v).metrics["trainer/step_seconds"] for v in (1, 2, 3)
    )
    served = worker.scheduler.virtual_time
    assert abs(served[costly.run_id] - served[cheap.run_id]) <= 2 * costly_step_s
    print(f"turns {len(trained)}: cheap {trained.count(cheap.run_id)}, costly 3; served {served}")


def test_cancelling_a_run_mid_update_frees_the_trainer_at_once(trainer_env: TrainerEnv) -> None:
    started = threading.Event()

    def factory(model, spec, config, pad, device, teacher=None):  # type: ignore[no-untyped-def]
        inner = build_updater(model, spec, config, pad, device, teacher=teacher)
        return _PacedUpdater(inner, started, 0.2) if config.seed == 7 else inner

    paced = trainer_env.create_run(method=_costly(), learning_rate=1e-3, seed=7)
    other = trainer_env.create_run(learning_rate=1e-3)
    trainer_env.push_groups(paced, 2)
    worker = trainer_env.worker(updater_factory=factory)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), kwargs={"idle_s": 0.05})
    thread.start()
    try:
        assert started.wait(60)  # the paced run's 16 x 0.2 s step is under way
        cancelled_at = time.monotonic()
        RunStore(trainer_env.r).set_status(paced.run_id, RunStatus.CANCELLED)
        trainer_env.push_groups(other, 2)
        deadline = time.monotonic() + 60
        while _version(trainer_env, other) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        freed_after = time.monotonic() - cancelled_at
        print(f"the other run committed {freed_after:.2f}s after the cancel")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert _version(trainer_env, other) == 1
    assert freed_after < 2.5  # well before the cancelled step would have ended (16 x 0.2 s from its start)
    assert LocalAdapterStore(trainer_env.settings.adapter_root).list_versions(paced.run_id) == []
    assert trainer_env.r.xlen(groups_stream(paced.run_id)) == 2  # its groups were not acked


class _PoisonedUpdater(_PacedUpdater):
    """The real updater, then one LoRA weight set to NaN (as a too-high learning rate would)."""

    def __init__(self, inner: Updater, model: torch.nn.Module) -> None:
        super().__init__(inner, threading.Event(), 0.0)
        self.model = model

    def step(
        self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        metrics = self.inner.step(groups, should_continue=should_continue)
        with torch.no_grad():
            next(p for p in self.model.parameters() if p.requires_grad).view(-1)[0] = float("nan")
        return metrics


def test_a_non_finite_update_is_never_published_and_fails_the_run(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(learning_rate=1e-3)
    trainer_env.push_groups(run, 2)

    def factory(model, spec, config, pad, device, teacher=None):  # type: ignore[no-untyped-def]
        return _PoisonedUpdater(build_updater(model, spec, config, pad, device, teacher=teacher), model)

    worker = trainer_env.worker(updater_factory=factory)
    assert worker.train_once(run.run_id) is False

    state = RunStore(trainer_env.r).get_run(run.run_id)
    assert state.status == RunStatus.FAILED and state.version == 0
    assert "step 1" in state.error and "lower learning_rate" in state.error
    assert any("non-finite" in m for m in _errors(trainer_env, run))
    assert LocalAdapterStore(trainer_env.settings.adapter_root).list_versions(run.run_id) == []
    assert not (Path(trainer_env.settings.data_dir) / "checkpoints" / run.run_id).exists()
    assert run.run_id not in worker._sessions and not worker.pool.bases


def test_two_trainers_split_the_runs_evenly(trainer_env: TrainerEnv) -> None:
    runs = [trainer_env.create_run(seed=i) for i in range(6)]
    for run in runs:
        trainer_env.push_groups(run, 2)
    first, second = trainer_env.worker(), trainer_env.worker()
    for _ in range(20):
        if all(_version(trainer_env, r) == 1 for r in runs):
            break
        first._train_active_runs()
        second._train_active_runs()
    assert all(_version(trainer_env, r) == 1 for r in runs)
    assert (len(first.leases.held()), len(second.leases.held())) == (3, 3)
    assert not set(first.leases.held()) & set(second.leases.held())


def test_a_trainer_defers_a_new_run_to_a_live_trainer_holding_fewer_leases(trainer_env: TrainerEnv) -> None:
    busy, idle = trainer_env.create_run(), trainer_env.create_run()
    trainer_env.push_groups(busy, 2)
    trainer_env.push_groups(idle, 2)
    first, second = trainer_env.worker(), trainer_env.worker()
    assert first.leases.acquire(busy.run_id)

    assert first.train_once(idle.run_id) is False  # second holds none: it is left to the second
    assert not first.leases.holds(idle.run_id)
    assert second.train_once(idle.run_id) is True
    second.close()  # a trainer that leaves withdraws its load: the first no longer defers
    trainer_env.push_groups(idle, 2)
    assert first.train_once(idle.run_id) is True


def test_a_failing_run_backs_off_alone_while_another_keeps_training(trainer_env: TrainerEnv) -> None:
    class BrokenUpdater(StandInUpdater):
        def step(
            self, groups: list[TrajectoryGroup], should_continue: Callable[[], bool] | None = None
        ) -> dict[str, float]:
            raise RuntimeError("disk full")

    def factory(model, spec, config, pad, device, teacher=None):  # type: ignore[no-untyped-def]
        kind = BrokenUpdater if config.seed == 13 else StandInUpdater
        return kind(model, spec, learning_rate=config.learning_rate, pad_token_id=pad, device=device)

    broken, healthy = trainer_env.create_run(seed=13), trainer_env.create_run(seed=1)
    trainer_env.push_groups(broken, 2)
    trainer_env.push_groups(healthy, 4)
    worker = trainer_env.worker(updater_factory=factory, retry_backoff_s=30.0)

    started = time.monotonic()
    _passes(worker, lambda: _version(trainer_env, healthy) == 2)

    assert time.monotonic() - started < 30.0  # nobody slept through the broken run's backoff
    assert worker.scheduler.not_before[broken.run_id] > time.monotonic() + 20.0
    assert RunStore(trainer_env.r).get_run(broken.run_id).status == RunStatus.RUNNING  # 1 of 3 failures
    assert "attempt 1 of 3" in _errors(trainer_env, broken)[0]


def test_one_round_trip_renews_many_leases_and_notices_a_stolen_one(trainer_env: TrainerEnv) -> None:
    from policyopt.workers.train.lease import lease_key

    worker = trainer_env.worker(lease_ttl_ms=60000)
    run_ids = [f"run-{i:012x}" for i in range(50)]
    assert all(worker.leases.acquire(run_id) for run_id in run_ids)
    for run_id in run_ids:
        trainer_env.r.pexpire(lease_key(run_id), 1000)
    trainer_env.r.set(lease_key(run_ids[7]), "another-trainer")

    worker.leases.renew_all()

    assert all(trainer_env.r.pttl(lease_key(r)) > 30000 for r in run_ids if r != run_ids[7])
    assert worker.leases.held() == sorted(set(run_ids) - {run_ids[7]})
    assert worker.leases.fewest_elsewhere() is None  # no other trainer is live
