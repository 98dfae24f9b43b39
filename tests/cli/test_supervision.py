"""A supervised stack (`policyopt up`): kill -9 of any child during a run is survived without losing work.

Each kind of child is killed in turn while a step's prompts are queued (rollout worker, trainer, server,
Valkey); the supervisor restarts it with the same ports and data, and the run reaches its next version.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from support.processes import health_status, manifest_group_ids, wait_for_health, wait_for_version

from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, RewardServer
from policyopt.core.settings import Settings

pytestmark = pytest.mark.slow

KEY = "supervision-key"
PROMPTS_PER_STEP = 2
FIRST_RESTART_S = 2.0  # long enough for the 1 s health probe to see Valkey down
log = logging.getLogger(__name__)


def digit_share(prompt: str, completion: str, metadata: dict[str, object]) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def pid_of(stack: Stack, child: str) -> int:
    pid = stack.valkey.pid if child == "valkey" and stack.valkey else stack.processes[child].pid
    assert pid is not None
    return pid


def wait_for_new_pid(stack: Stack, child: str, old_pid: int, timeout_s: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if stack.restarts.get(child, 0) >= 1 and pid_of(stack, child) != old_pid:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{child} was not restarted within {timeout_s}s")


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # reaped
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_run_survives_kill_9_of_each_child(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        port=0,
        http_port=0,  # free HTTP ports, never the default 8080
        api_keys={KEY: "team"},
        torch_threads=1,
        model_roots=(str(tiny_model_dir.parent),),
        trainer_lease_ms=3000,  # a killed trainer's run lease frees quickly
        claim_idle_ms=3000,  # and so do a killed rollout worker's claimed prompts
    )
    timings: dict[str, float] = {}
    stack_cm = start_stack(
        settings, log_dir=tmp_path / "logs", supervise=True, first_restart_s=FIRST_RESTART_S
    )
    with (
        stack_cm as stack,
        RewardServer(digit_share) as endpoint,
        Client(stack.address, api_key=KEY) as client,
    ):
        http_urls = dict(stack.http_urls)
        client.register_reward_endpoint("digits", endpoint.address)
        run = client.create_run(
            base_model=str(tiny_model_dir),
            method="grpo",
            reward_endpoint="digits",
            group_size=2,
            prompts_per_step=PROMPTS_PER_STEP,
            max_new_tokens=6,
            learning_rate=5e-3,
        )
        submitted: list[str] = []

        def submit_step(tag: str) -> None:
            prompts = [f"{tag}: say a number like {i}" for i in range(PROMPTS_PER_STEP)]
            submitted.extend(run.submit_prompts(prompts))

        submit_step("start")
        wait_for_version(client, run.run_id, 1, timeout_s=240)

        version = 1
        for child in ("rollout-0", "trainer", "server", "valkey"):
            if child in ("rollout-0", "trainer"):
                submit_step(child)  # the child dies with the step's work claimed or pending
                time.sleep(1.0)
            old_pid = pid_of(stack, child)
            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            if child == "valkey":
                timings["valkey health NOT_SERVING after"] = wait_for_health(stack.address, "NOT_SERVING", 10)
                assert health_status(stack.address, "") == "NOT_SERVING"  # the overall service too
            timings[f"{child} restarted after"] = wait_for_new_pid(stack, child, old_pid)
            assert not is_zombie(old_pid)
            if child in ("server", "valkey"):
                wait_for_health(stack.address, "SERVING", 60)
                timings[f"{child} health SERVING after"] = time.monotonic() - killed_at
                assert health_status(stack.address, "") == "SERVING"
                submit_step(child)  # through the restarted server / into the restarted Valkey
            version += 1
            wait_for_version(client, run.run_id, version, timeout_s=240)
            timings[f"{child}: next version after"] = time.monotonic() - killed_at

        adapters = [v.version for v in client.list_adapters(run.run_id)]
        assert adapters == list(range(1, version + 1))
        assert stack.restarts == {"rollout-0": 1, "trainer": 1, "server": 1, "valkey": 1}
        assert stack.http_urls == http_urls  # the same HTTP ports across restarts
        stack.check_alive()  # supervised: restarts are not failures

    trained = manifest_group_ids(settings.adapter_root, run.run_id)
    assert sorted(trained) == adapters
    assert all(len(ids) == PROMPTS_PER_STEP for ids in trained.values())
    group_ids = [g for ids in trained.values() for g in ids]
    assert len(set(group_ids)) == len(group_ids), "a group was trained twice"
    # Every version trains PROMPTS_PER_STEP groups and one step's prompts were submitted per version, so each
    # submitted prompt's group is trained exactly once and none is left queued.
    trained_prompts = Counter(g.rsplit("-", 1)[0] for g in group_ids)
    assert trained_prompts == Counter(submitted)
    log.warning("supervision timings (s): %s", {k: round(v, 1) for k, v in timings.items()})
    print("supervision timings (s):", {k: round(v, 1) for k, v in timings.items()})
