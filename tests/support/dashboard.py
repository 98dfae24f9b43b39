"""Helpers for the dashboard tests: a run with committed steps (real adapter files, real commits), a
diagnostic warning, and the HTTP server of a fresh database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from policyopt.core.settings import Settings
from policyopt.core.types import AdapterManifest, EventKind, Run, RunConfig, RunEvent
from policyopt.server.app import build_http_server
from policyopt.server.dashboard import HttpServer
from policyopt.state.adapter_store import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore

KEYS = {"a": "key-a", "b": "key-b"}  # tenant -> API key


def dashboard_settings(redis_url: str, data_dir: Path, **changes: object) -> Settings:
    settings = Settings(
        redis_url=redis_url,
        api_keys={key: tenant for tenant, key in KEYS.items()},
        data_dir=str(data_dir),
        http_port=0,
    )
    return settings.replace(**changes)


@contextmanager
def running_dashboard(settings: Settings) -> Iterator[HttpServer]:
    """The server's real HTTP app (dashboard and /metrics) on a free port of 127.0.0.1."""
    client = redis.Redis.from_url(settings.redis_url or "")
    http = build_http_server(settings, client)
    assert http is not None
    try:
        with http:
            yield http
    finally:
        client.close()


def step_metrics(step: int) -> dict[str, float]:
    """Known metrics of step ``step``: reward/mean is step / 10."""
    return {
        "reward/mean": step / 10,
        "reward/std": 0.5 - step / 100,
        "reward/zero_variance_group_fraction": 0.25,
        "trajectory/loss": 1.0 / step,
        "trajectory/kl_ref": step / 1000,
        "trajectory/entropy": 2.0 - step / 20,
        "trainer/step_seconds": 1.5,
    }


def commit_step(r: redis.Redis, settings: Settings, run_id: str, step: int) -> AdapterManifest:
    """Publish adapter version ``step`` (small made-up PEFT files) and commit it, as the trainer does."""
    files = settings.adapter_root.parent / "staging" / f"{run_id}-{step}"
    files.mkdir(parents=True)
    (files / "adapter_config.json").write_text('{"r": 4, "peft_type": "LORA"}')
    (files / "adapter_model.safetensors").write_bytes(os.urandom(3000 + step))
    manifest = AdapterManifest(
        run_id=run_id, version=step, step=step, base_model="tiny", method="grpo", metrics=step_metrics(step)
    )
    published = LocalAdapterStore(settings.adapter_root).publish(run_id, step, files, manifest)
    RunStore(r).commit_step(WorkQueue(r), published, [])
    return published


def run_with_steps(
    r: redis.Redis, settings: Settings, tenant: str, steps: int, base_model: str = "tiny"
) -> Run:
    run = RunStore(r).create_run(tenant, RunConfig(base_model=base_model, max_steps=10))
    for step in range(1, steps + 1):
        commit_step(r, settings, run.run_id, step)
    return RunStore(r).get_run(run.run_id)


def emit_warning(r: redis.Redis, run_id: str, step: int) -> str:
    """A WARNING event as the trainer writes it (``str(DiagnosticWarning)``); returns its message."""
    from policyopt.workers.algorithms import DiagnosticWarning

    warning = DiagnosticWarning(
        name="entropy_collapse",
        axis="trajectory_side",
        message="entropy fell below 0.05 nats/token",
        suggestion="raise the clip range or add an entropy bonus",
    )
    RunStore(r).add_event(
        RunEvent(run_id=run_id, kind=EventKind.WARNING, message=str(warning), step=step, version=step)
    )
    return str(warning)
