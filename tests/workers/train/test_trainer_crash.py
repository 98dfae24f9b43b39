"""A real trainer process killed mid-step or mid-publish, then restarted: nothing lost, nothing twice.

Runs ``python -m policyopt.workers.train`` against the embedded Valkey with the real method library
(GRPO) and the tiny model. Test-only hooks: POLICYOPT_TEST_STEP_DELAY_S holds the trainer inside a step
(after the update, before anything is durable); POLICYOPT_TEST_CRASH_AT=point:version SIGKILLs it there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.trainer import TrainerEnv

from policyopt.core.types import EvalConfig, EvalPrompt, MethodChoice, Run
from policyopt.state import LocalAdapterStore
from policyopt.state.evals import EvalStore
from policyopt.state.queue import TRAINER_GROUP, groups_stream
from policyopt.state.runs import RunStore

pytestmark = pytest.mark.slow

GROUPS, PER_STEP = 6, 2
STEPS = GROUPS // PER_STEP


class Trainers:
    """Starts trainer processes and kills whatever is left at the end."""

    def __init__(self, env: TrainerEnv, log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **hooks: str) -> subprocess.Popen[bytes]:
        child_env = dict(os.environ)
        child_env.update({
            "REDIS_URL": self.env.settings.redis_url or "",
            "POLICYOPT_DATA_DIR": self.env.settings.data_dir,
            "POLICYOPT_DEVICE": "cpu",
            "POLICYOPT_TORCH_THREADS": "1",
            "POLICYOPT_TRAINER_LEASE_MS": "1500",
            "POLICYOPT_LOG_LEVEL": "INFO",
            "POLICYOPT_MODEL_ROOTS": os.pathsep.join(self.env.settings.model_roots),
            "PYTHONUNBUFFERED": "1",
            **hooks,
        })  # fmt: skip
        log = open(self.log_dir / f"trainer-{len(self.procs)}.log", "wb")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen([sys.executable, "-m", "policyopt.workers.train"], env=child_env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("*.log")))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def trainers(trainer_env: TrainerEnv, tmp_path: Path) -> Iterator[Trainers]:
    (tmp_path / "logs").mkdir()
    pool = Trainers(trainer_env, tmp_path / "logs")
    yield pool
    pool.kill_all()


def _wait_for(what: str, condition: Callable[[], bool], trainers: Trainers, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; trainer logs:\n{trainers.logs()}")


def _pending(env: TrainerEnv, run: Run) -> int:
    return int(env.r.xpending(groups_stream(run.run_id), TRAINER_GROUP)["pending"])


def _version(env: TrainerEnv, run: Run) -> int:
    return RunStore(env.r).get_run(run.run_id).version


def _assert_trained_exactly_once(env: TrainerEnv, run: Run, submitted: list[str]) -> None:
    store = LocalAdapterStore(env.settings.adapter_root)
    assert store.list_versions(run.run_id) == list(range(1, STEPS + 1))
    assert [m.version for m in RunStore(env.r).list_versions(run.run_id)] == list(range(1, STEPS + 1))
    trained = [g for v in range(1, STEPS + 1) for g in store.read_manifest(run.run_id, v).group_ids]
    assert sorted(trained) == sorted(submitted)  # none lost
    assert len(trained) == len(set(trained))  # none twice
    for version in range(1, STEPS + 1):
        store.open_version(run.run_id, version, verify=True)
    assert _pending(env, run) == 0
    assert env.r.xlen(groups_stream(run.run_id)) == 0
    assert RunStore(env.r).get_run(run.run_id).groups_trained == GROUPS


def _new_run(env: TrainerEnv) -> tuple[Run, list[str]]:
    # Every group is sampled at version 0 up front, so the run must allow that much staleness.
    run = env.create_run(
        method=MethodChoice("grpo"), prompts_per_step=PER_STEP, learning_rate=1e-3, max_staleness=STEPS
    )
    return run, env.push_groups(run, GROUPS)


def test_kill_9_mid_step_then_restart_loses_nothing_and_trains_nothing_twice(
    trainer_env: TrainerEnv, trainers: Trainers
) -> None:
    run, submitted = _new_run(trainer_env)
    victim = trainers.start(POLICYOPT_TEST_STEP_DELAY_S="4")
    _wait_for("step 2 in progress", lambda: _version(trainer_env, run) == 1 and _pending(trainer_env, run) == PER_STEP,
              trainers)  # fmt: skip
    time.sleep(1.0)  # inside the delay: the update ran, nothing of step 2 is durable yet
    victim.kill()
    victim.wait()
    assert _version(trainer_env, run) == 1 and _pending(trainer_env, run) == PER_STEP

    survivor = trainers.start()
    _wait_for(f"version {STEPS}", lambda: _version(trainer_env, run) == STEPS, trainers)
    _assert_trained_exactly_once(trainer_env, run, submitted)

    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("crash_point", "on_disk_after_crash"), [("after_checkpoint", [1]), ("after_publish", [1, 2])]
)
def test_crash_around_the_publish_of_version_2_recovers_on_restart(
    trainer_env: TrainerEnv, trainers: Trainers, crash_point: str, on_disk_after_crash: list[int]
) -> None:
    run, submitted = _new_run(trainer_env)
    victim = trainers.start(POLICYOPT_TEST_CRASH_AT=f"{crash_point}:2")
    assert victim.wait(timeout=120) == -signal.SIGKILL, trainers.logs()
    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    assert store.list_versions(run.run_id) == on_disk_after_crash
    assert _version(trainer_env, run) == 1 and _pending(trainer_env, run) == PER_STEP
    published = {v: store.read_manifest(run.run_id, v) for v in on_disk_after_crash}

    trainers.start()
    _wait_for(f"version {STEPS}", lambda: _version(trainer_env, run) == STEPS, trainers)
    _assert_trained_exactly_once(trainer_env, run, submitted)
    for version, manifest in published.items():  # finished, never retrained or republished
        assert store.read_manifest(run.run_id, version) == manifest


def test_a_crash_between_publish_and_commit_still_queues_the_versions_evaluation(
    trainer_env: TrainerEnv, trainers: Trainers
) -> None:
    run = trainer_env.create_run(
        method=MethodChoice("grpo"), prompts_per_step=PER_STEP, learning_rate=1e-3, max_staleness=STEPS,
        eval=EvalConfig(every=1),
    )  # fmt: skip
    evals = EvalStore(trainer_env.r)
    evals.add_prompts(run.run_id, [EvalPrompt("Count to three.")], limit=10)
    trainer_env.push_groups(run, GROUPS)
    victim = trainers.start(POLICYOPT_TEST_CRASH_AT="after_publish:2")
    assert victim.wait(timeout=120) == -signal.SIGKILL, trainers.logs()
    assert [t.version for t in evals.queued_tasks() if t.run_id == run.run_id] == [1]  # 2: published only

    trainers.start()
    _wait_for(f"version {STEPS}", lambda: _version(trainer_env, run) == STEPS, trainers)
    # the restarted trainer finished version 2's commit, and its evaluation with it
    assert [t.version for t in evals.queued_tasks() if t.run_id == run.run_id] == [1, 2, 3]
