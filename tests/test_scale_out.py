"""Several processes of each role on one Redis: 2 servers, 2 rollout workers and 2 trainers, as separate
processes on one embedded Valkey, train 4 runs created through both servers; the runs spread over both
trainers, and when one trainer is killed (-9) its runs move to the other once their leases expire."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.processes import wait_for_version

from policyopt.cli.supervisor import Stack, child_env, local_settings, wait_for_port
from policyopt.client import Client, RewardServer, RunHandle
from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey
from policyopt.workers.train.lease import ALIVE_KEY, lease_key

pytestmark = pytest.mark.slow

KEY = "scale-out-key"
LEASE_MS = 3000
TAKEOVER_MARGIN_S = 10.0
"""Beyond the lease TTL: the survivor's next scheduling pass (it polls for ready runs about once a second),
on a 2-core machine that six service processes share."""
log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def service(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[Stack, list[str]]]:
    """Valkey, then 2 servers, 2 rollout workers and 2 trainers as child processes; the servers' addresses."""
    with EmbeddedValkey(tmp_path / "valkey") as valkey:
        settings = local_settings(
            Settings(
                data_dir=str(tmp_path),
                redis_url=valkey.url,
                http_port=-1,
                api_keys={KEY: "team"},
                torch_threads=1,
                model_roots=(str(tiny_model_dir.parent),),
                trainer_lease_ms=LEASE_MS,
                claim_idle_ms=LEASE_MS,
            )
        )
        env = {**child_env(settings, 1), "POLICYOPT_HTTP_PORT": "-1"}
        ports = [free_port(), free_port()]
        (tmp_path / "logs").mkdir()
        stack = Stack(settings=settings, address=f"127.0.0.1:{ports[0]}", log_dir=tmp_path / "logs")
        try:
            for i, port in enumerate(ports):
                stack.launch(f"server-{i}", ["serve", "--host", "127.0.0.1", "--port", str(port)], env)
            for i in range(2):
                stack.launch(f"rollout-{i}", ["worker", "rollout"], env)
                stack.launch(f"trainer-{i}", ["worker", "train"], env)
            for port in ports:
                wait_for_port("127.0.0.1", port, 120, stack)
            yield stack, [f"127.0.0.1:{port}" for port in ports]
        finally:
            stack.stop()


def lease_holders(r: redis.Redis, run_ids: list[str]) -> dict[str, int | None]:
    """The pid of the trainer holding each run's lease (``trainer-HOST-PID:TOKEN``), None when free."""
    holders: dict[str, int | None] = {}
    for run_id, value in zip(run_ids, r.mget([lease_key(run_id) for run_id in run_ids]), strict=True):
        holders[run_id] = int(value.decode().split(":")[0].rsplit("-", 1)[1]) if value else None
    return holders


def wait_until(condition: object, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


def submit_step(run: RunHandle, tag: str) -> None:
    run.submit_prompts([f"{tag}: say a number like {i}" for i in range(2)])


def test_two_of_each_role_share_the_runs_and_a_killed_trainers_runs_move_on(
    service: tuple[Stack, list[str]], tiny_model_dir: Path
) -> None:
    stack, addresses = service
    trainer_pids = {stack.processes[f"trainer-{i}"].pid for i in range(2)}
    r = redis.Redis.from_url(stack.settings.redis_url or "")
    # Both trainers announce themselves before the runs exist, so that placement sees both.
    wait_until(lambda: r.zcard(ALIVE_KEY) == 2, 120, "both trainers' heartbeats")
    with (
        RewardServer(lambda prompt, completion, metadata: float(completion.count("1"))) as endpoint,
        Client(addresses[0], api_key=KEY) as first,
        Client(addresses[1], api_key=KEY) as second,
    ):
        first.register_reward_endpoint("ones", endpoint.address)
        runs = [
            client.create_run(
                base_model=str(tiny_model_dir),
                method="grpo",
                reward_endpoint="ones",
                group_size=2,
                prompts_per_step=2,
                max_new_tokens=6,
                learning_rate=5e-3,
            )
            for client in (first, second, first, second)
        ]
        run_ids = [run.run_id for run in runs]
        for run in runs:
            submit_step(run, "one")
            submit_step(run, "two")
        for i, run in enumerate(runs):
            wait_for_version((first, second)[i % 2], run.run_id, 2, timeout_s=300)

        holders = lease_holders(r, run_ids)
        assert set(holders.values()) == trainer_pids, holders  # both trainers hold runs

        victim = next(iter(holders.values()))
        assert victim is not None
        moved = [run for run in runs if holders[run.run_id] == victim]
        for run in moved:
            submit_step(run, "three")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        takeover_s = wait_until(
            lambda: all(
                pid not in (None, victim) for pid in lease_holders(r, [m.run_id for m in moved]).values()
            ),
            LEASE_MS / 1000 + TAKEOVER_MARGIN_S,
            "the survivor taking the killed trainer's leases",
        )
        for run in moved:
            wait_for_version(first, run.run_id, 3, timeout_s=120)
        next_version_s = time.monotonic() - killed_at
        survivor = (trainer_pids - {victim}).pop()
        assert set(lease_holders(r, run_ids).values()) == {survivor}
        assert [v.version for v in first.list_adapters(moved[0].run_id)] == [1, 2, 3]
    r.close()
    timings = {
        "runs moved": len(moved),
        "takeover_s": round(takeover_s, 1),
        "next_version_s": round(next_version_s, 1),
    }
    log.warning("scale-out timings: %s", timings)
    print("scale-out timings:", timings)
