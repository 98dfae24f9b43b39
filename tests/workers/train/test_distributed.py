"""The data-parallel trainer: two gloo ranks on the CPU publish the adapters one process publishes.

The process test starts ``torchrun --nproc-per-node 2 -m policyopt.cli.main worker train`` against the
embedded Valkey with the tiny model, lets it train runs of three aggregations to completion, stops it with
SIGTERM, then trains copies of the same runs on the same groups in one in-process trainer and compares
every LoRA tensor of every version.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.trainer import TrainerEnv

from policyopt.core.types import MethodChoice, Run, RunStatus, Trajectory, TrajectoryGroup, to_json
from policyopt.state import LocalAdapterStore
from policyopt.state.queue import groups_stream
from policyopt.state.runs import RunStore
from policyopt.workers.algorithms.diagnostics import TokenMetricAccumulator
from policyopt.workers.train.distributed import SINGLE, Ranks, ranks_from_env
from policyopt.workers.train.session import build_updater

STEPS = 2
# fp32 reduction order differs between shards and one batch; AdamW's normalized steps carry that into the
# weights, and grpo's token TIS weights (exp of a log-prob difference) add to it: measured up to 1.1e-5.
TOLERANCE = 3e-5

METHODS = {
    # sequence-level mean of token means, a KL pass on the reference, two optimizer steps per step
    "grpo_kl_two_mini_batches": MethodChoice("grpo", trajectory_side={"mini_batches": 2, "kl.coef": 0.04}),
    # token sums over a constant (Dr.GRPO)
    "dr_grpo": MethodChoice("dr_grpo"),
    # every token of the step weighs the same
    "grpo_token_mean": MethodChoice("grpo", trajectory_side={"aggregation": "token_mean"}),
}


# ----- the rank context, no processes ---------------------------------------------------------------


def test_world_size_one_is_the_single_process_path() -> None:
    assert ranks_from_env({}) is SINGLE
    assert ranks_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    assert SINGLE.shard([3, 1, 2], [1, 9, 9, 9]) == [3, 1, 2]  # untouched: one-process order
    assert SINGLE.agree(False) is False


def test_torchrun_environment_names_the_rank() -> None:
    ranks = ranks_from_env({"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.is_leader) == (5, 4, 1, False)


def test_shards_deal_sequences_longest_first_and_cover_each_row_once() -> None:
    lengths = [5, 9, 1, 7, 3]
    shards = [Ranks(rank, 2).shard(range(5), lengths) for rank in range(2)]
    assert shards == [[1, 0, 2], [3, 4]]
    assert sorted(shards[0] + shards[1]) == list(range(5))


def test_merged_token_metrics_equal_one_accumulator_over_all_tokens() -> None:
    values_B_T = torch.tensor([[1.0, 2.0, 0.0], [4.0, 5.0, 6.0], [7.0, 0.0, 0.0]])
    mask_B_T = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    whole = TokenMetricAccumulator()
    whole.add({"m": values_B_T, "m_max": values_B_T, "m_min": values_B_T}, mask_B_T)
    parts = [TokenMetricAccumulator() for _ in range(3)]
    for row, part in enumerate(parts[:2]):  # the third rank had no rows
        part.add({"m": values_B_T[row::2], "m_max": values_B_T[row::2], "m_min": values_B_T[row::2]},
                 mask_B_T[row::2])  # fmt: skip
    assert (
        TokenMetricAccumulator.merged(parts).result()
        == whole.result()
        == {"m": 25 / 6, "m_max": 7.0, "m_min": 1.0}
    )


# ----- PolicyUpdater on two gloo ranks vs alone -----------------------------------------------------


def _max_difference(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> float:
    assert left.keys() == right.keys()
    return max((float((left[k].float() - right[k].float()).abs().max()) for k in left), default=0.0)


@pytest.mark.slow
def test_two_gloo_ranks_update_like_one_process_for_every_aggregation(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    from support.distributed import METHODS, STEPS, train_alone, train_rank

    mp.spawn(train_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    train_alone(tmp_path)
    alone = torch.load(tmp_path / "rank0-of-1.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"rank{r}-of-2.pt", weights_only=False) for r in range(2)]
    worst = 0.0
    for name in METHODS:
        for part in ("weights", "critic"):  # every rank holds the very same weights
            assert _max_difference(ranks[0][name][part], ranks[1][name][part]) == 0.0, (name, part)
        worst = max(worst, _max_difference(ranks[0][name]["weights"], alone[name]["weights"]))
        worst = max(worst, _max_difference(ranks[0][name]["critic"], alone[name]["critic"]))
        for step in range(STEPS):
            one, two = alone[name]["metrics"][step], ranks[0][name]["metrics"][step]
            assert one.keys() == two.keys()
            for key in one.keys() - {"trajectory/value_clip_fraction"}:  # a token at the clip edge may flip
                assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (name, step, key)
    print(f"max abs difference, PolicyUpdater on 2 ranks vs alone: {worst:.3g}")
    assert worst <= TOLERANCE


# ----- two ranks under torchrun vs one process ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _groups(env: TrainerEnv, count: int) -> list[TrajectoryGroup]:
    """Groups of varied completion lengths, so the ranks' shards hold different token counts."""
    rng = env.rng
    groups = []
    for index in range(count):
        trajectories = []
        for member in range(3):
            length = rng.randint(2, 9)
            trajectories.append(Trajectory(
                completion_ids=[rng.randrange(4, 300) for _ in range(length)],
                sampler_logprobs=[-rng.random() * 3 for _ in range(length)],
                reward=float((member + index) % 2) + 0.25 * member,
                finish_reason="stop",
            ))  # fmt: skip
        groups.append(TrajectoryGroup(
            run_id="", group_id=f"g-{index}", prompt_id=f"p-{index}", prompt="What is 1 + 1?",
            prompt_ids=[rng.randrange(4, 300) for _ in range(rng.randint(3, 7))], trajectories=trajectories,
            adapter_version=0,
        ))  # fmt: skip
    return groups


def _create_runs(env: TrainerEnv, groups: list[TrajectoryGroup]) -> dict[str, Run]:
    runs = {}
    for name, method in METHODS.items():
        run = env.create_run(method=method, max_steps=STEPS, prompts_per_step=2, group_size=3)
        env.push_groups(run, 0)  # the stream and its consumer group
        for group in groups:
            env.r.xadd(
                groups_stream(run.run_id), {"data": to_json(dataclasses.replace(group, run_id=run.run_id))}
            )
        runs[name] = run
    return runs


def _wait_for(what: str, condition: Callable[[], bool], logs: Callable[[], str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


@pytest.fixture
def torchrun_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "torchrun.log"


def _start_torchrun(env: TrainerEnv, log_path: Path) -> subprocess.Popen[bytes]:
    child_env = dict(os.environ)
    child_env.update({
        "REDIS_URL": env.settings.redis_url or "",
        "POLICYOPT_DATA_DIR": env.settings.data_dir,
        "POLICYOPT_DEVICE": "cpu",
        "POLICYOPT_TORCH_THREADS": "1",
        "POLICYOPT_LOG_LEVEL": "INFO",
        "POLICYOPT_MODEL_ROOTS": os.pathsep.join(env.settings.model_roots),
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "-m", "policyopt.cli.main", "worker", "train",
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        command, env=child_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )


def _adapter(store: LocalAdapterStore, run: Run, version: int) -> dict[str, torch.Tensor]:
    return load_file(str(store.open_version(run.run_id, version, verify=True) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_ranks_under_torchrun_publish_the_adapters_of_one_process(
    trainer_env: TrainerEnv, torchrun_log: Path
) -> None:
    groups = _groups(trainer_env, 2 * STEPS)
    parallel = _create_runs(trainer_env, groups)
    runs = RunStore(trainer_env.r)
    proc = _start_torchrun(trainer_env, torchrun_log)

    def logs() -> str:
        return torchrun_log.read_text(errors="replace")[-6000:]

    try:
        _wait_for(
            "the two-rank trainer to complete every run",
            lambda: all(runs.get_run(run.run_id).status == RunStatus.COMPLETED for run in parallel.values()),
            logs,
            timeout_s=300,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = logs()
    assert "trainer rank 1 of 2" in text and "trainer rank 1: rank 0 stopped, so does this rank" in text, text
    # torchrun itself reports the SIGTERM it got as a SignalException; the ranks exit without one
    assert text.count("Traceback") == text.count("SignalException: Process"), text
    assert "ChildFailedError" not in text, text

    single = _create_runs(trainer_env, groups)
    worker = trainer_env.worker(updater_factory=build_updater)
    for run in single.values():
        for _ in range(STEPS):
            assert worker.train_once(run.run_id) is True

    store = LocalAdapterStore(trainer_env.settings.adapter_root)
    worst = 0.0
    for name in METHODS:
        for version in range(1, STEPS + 1):
            two_ranks = _adapter(store, parallel[name], version)
            one_process = _adapter(store, single[name], version)
            assert two_ranks.keys() == one_process.keys()
            for key, tensor in one_process.items():
                worst = max(worst, float((two_ranks[key] - tensor).abs().max()))
            metrics_2 = store.read_manifest(parallel[name].run_id, version).metrics
            metrics_1 = store.read_manifest(single[name].run_id, version).metrics
            for key in ("trajectory/loss", "trajectory/grad_norm", "reward/mean"):
                assert metrics_2[key] == pytest.approx(metrics_1[key], rel=1e-4, abs=1e-6), (
                    name,
                    version,
                    key,
                )
        v1, last = (_adapter(store, single[name], v) for v in (1, STEPS))
        assert any(not torch.equal(v1[k], last[k]) for k in v1), f"{name}: the adapter did not train"
    print(f"max abs difference, 2 ranks vs 1 process: {worst:.3g}")
    assert worst <= TOLERANCE
