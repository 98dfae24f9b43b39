"""Many runs on one service: every run progresses, fairly, and runs on one base share its memory.

    python bench/multi_tenant.py [--runs 1,4,16] [--window-s 150] [--memory-runs 1,8] [--memory-model smollm2]

Part 1, fairness (tiny model): for each N, a fresh ``policyopt up`` stack (embedded Valkey, server, one
rollout worker, one trainer, as separate processes) and N runs spread over 3 tenants, each with its own
reward endpoint, all created and given prompts at once (enough to keep every run busy for the window).
Over ``--window-s`` seconds it prints: time to first version (p50, p99, from the run's submission),
versions in total per minute, Jain's fairness index of the versions each run reached (1.0: equal
shares; 1/N: one run got everything), and the trainer's and rollout worker's resident memory (now and
peak).

Part 2, memory (``--memory-model``, SmolLM2-135M by default): a fresh stack per N in ``--memory-runs``,
N runs on the same base model (LoRA r16 on q/k/v/o) each trained to version 2; prints the trainer's
resident memory and its ratio to the 1-run stack's. The target is at most 1.3x for 8 runs.

Prints the machine's load average before and after each part: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from policyopt.cli.supervisor import Stack, start_stack
from policyopt.client import Client, RewardServer, RunHandle
from policyopt.core.settings import Settings
from policyopt.models import resolve_base_model

TENANTS = ("alpha", "beta", "gamma")


def digit_share(prompt: str, completion: str, metadata: dict[str, object]) -> float:
    """Share of the completion's characters that are digits: a verifiable reward a tiny model can move."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = float(value.split()[0]) / 1024
    return fields.get("VmRSS", math.nan), fields.get("VmHWM", math.nan)


def jain_index(shares: list[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when equal, 1/n when one takes all."""
    total, squares = sum(shares), sum(x * x for x in shares)
    return total * total / (len(shares) * squares) if squares else math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of the values; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass
class Tracked:
    run: RunHandle
    submitted_at: float
    first_version_at: float | None = None
    versions: int = 0


@dataclass
class Service:
    """A ``policyopt up`` stack with one API key and one reward endpoint per tenant."""

    stack: Stack
    clients: dict[str, Client]
    endpoints: list[RewardServer] = field(default_factory=list)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for endpoint in self.endpoints:
            endpoint.stop()
        self.stack.stop()

    def rss(self, name: str) -> tuple[float, float]:
        return memory_mib(self.stack.processes[name].pid)


def start_service(work: Path, model_dir: Path) -> Service:
    settings = Settings(
        data_dir=str(work / "data"),
        port=0,
        api_keys={f"key-{t}": t for t in TENANTS},
        model_roots=(str(model_dir.parent),),
        log_level="WARNING",
    )
    stack = start_stack(settings, log_dir=work / "logs")
    service = Service(stack, {t: Client(stack.address, api_key=f"key-{t}") for t in TENANTS})
    for client in service.clients.values():
        endpoint = RewardServer(digit_share).start()
        service.endpoints.append(endpoint)
        client.register_reward_endpoint("digits", endpoint.address)
    return service


def create_runs(service: Service, model_dir: Path, n: int, prompts: int, max_steps: int = 0) -> list[Tracked]:
    """N runs round-robin over the tenants, each given ``prompts`` prompts right after it is created."""
    tracked = []
    for i in range(n):
        client = service.clients[TENANTS[i % len(TENANTS)]]
        run = client.create_run(
            base_model=str(model_dir),
            method="grpo",
            reward_endpoint="digits",
            group_size=4,
            prompts_per_step=2,
            max_new_tokens=8,
            learning_rate=5e-3,
            max_steps=max_steps,
            seed=i,
        )
        run.submit_prompts([f"Run {i}: say a number like {k}" for k in range(prompts)])
        tracked.append(Tracked(run, time.monotonic()))
    return tracked


def poll(tracked: list[Tracked], until: float, stop_when: int | None = None) -> None:
    """Refresh every run's version until ``until`` (or every run reached ``stop_when``)."""
    while time.monotonic() < until:
        for t in tracked:
            t.versions = t.run.refresh().version
            if t.versions >= 1 and t.first_version_at is None:
                t.first_version_at = time.monotonic()
        if stop_when is not None and all(t.versions >= stop_when for t in tracked):
            return
        time.sleep(0.5)


def fairness(model_dir: Path, n: int, window_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="policyopt-bench-mt-") as work:
        service = start_service(Path(work), model_dir)
        try:
            # More prompts than the window can use, so every run has work throughout (about 200 steps a
            # minute in all were measured on 2 cores); a run that ran dry is reported.
            prompts = 3000 // n + 50
            tracked = create_runs(service, model_dir, n, prompts=prompts)
            started = min(t.submitted_at for t in tracked)
            poll(tracked, started + window_s)
            elapsed = time.monotonic() - started
            waits = [t.first_version_at - t.submitted_at for t in tracked if t.first_version_at is not None]
            versions = [float(t.versions) for t in tracked]
            trainer, rollout = service.rss("trainer"), service.rss("rollout-0")
        finally:
            service.close()
    never = n - len(waits)
    dry = sum(t.versions * 2 >= prompts for t in tracked)
    print(
        f"{n:>4} runs | first version p50 {percentile(waits, 50):6.1f}s p99 {percentile(waits, 99):6.1f}s"
        f"{f' ({never} runs never)' if never else ''} | {sum(versions) / elapsed * 60:6.1f} versions/min"
        f" | Jain {jain_index(versions):.3f} (versions per run {min(versions):.0f}-{max(versions):.0f})"
        f" | trainer RSS {trainer[0]:.0f} MiB (peak {trainer[1]:.0f}), rollout {rollout[0]:.0f} MiB"
        f" (peak {rollout[1]:.0f}){f' ({dry} runs ran out of prompts)' if dry else ''}",
        flush=True,
    )


def memory(model_dir: Path, n: int, timeout_s: float) -> float:
    with tempfile.TemporaryDirectory(prefix="policyopt-bench-mem-") as work:
        service = start_service(Path(work), model_dir)
        try:
            tracked = create_runs(service, model_dir, n, prompts=4, max_steps=0)
            poll(tracked, time.monotonic() + timeout_s, stop_when=2)
            reached = sum(t.versions >= 2 for t in tracked)
            time.sleep(1.0)
            trainer, rollout = service.rss("trainer"), service.rss("rollout-0")
        finally:
            service.close()
    print(
        f"{n:>4} runs on {model_dir.name} | {reached}/{n} reached version 2 | trainer RSS {trainer[0]:.0f} MiB"
        f" (peak {trainer[1]:.0f}) | rollout RSS {rollout[0]:.0f} MiB (peak {rollout[1]:.0f})",
        flush=True,
    )
    return trainer[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="1,4,16", help="comma-separated run counts for the fairness part")
    parser.add_argument("--window-s", type=float, default=150.0, help="measurement window per run count")
    parser.add_argument("--memory-runs", default="1,8", help="run counts for the memory part ('' skips it)")
    parser.add_argument("--memory-model", default="smollm2", help="'smollm2', 'tiny' or a model directory")
    parser.add_argument("--data-dir", default=str(Path.home() / ".policyopt"), help="where built models live")
    args = parser.parse_args()

    tiny = resolve_base_model("tiny", args.data_dir)
    print(
        f"# fairness: tiny model, 3 tenants, GRPO, 4 completions x 2 prompts per step; {load()}", flush=True
    )
    for n in (int(x) for x in args.runs.split(",") if x):
        fairness(tiny, n, args.window_s)
    print(f"# {load()}", flush=True)

    counts = [int(x) for x in args.memory_runs.split(",") if x]
    if counts:
        model_dir = resolve_base_model(args.memory_model, args.data_dir)
        print(f"# memory: {model_dir.name}, LoRA r16 q/k/v/o, each run to version 2; {load()}", flush=True)
        rss = {n: memory(model_dir, n, timeout_s=900) for n in counts}
        base = rss[counts[0]]
        for n in counts[1:]:
            print(f"trainer RSS with {n} runs / with {counts[0]}: {rss[n] / base:.2f}x", flush=True)
        print(f"# {load()}", flush=True)


if __name__ == "__main__":
    main()
