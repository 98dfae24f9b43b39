"""SAMPLE events through the service: a run created with ``sample_every`` keeps a few completions of its
steps, WatchRun carries them, and ``policyopt runs export`` writes them as JSON lines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import redis
from support.trainer import TrainerEnv

from policyopt.cli.export import read_events
from policyopt.cli.main import main
from policyopt.client import Client, EventKind
from policyopt.state.runs import RunStore


def test_sampled_completions_reach_watch_run_and_the_export(
    server, valkey_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    key = server.keys["b"]
    with Client(server.address, api_key=key) as client:
        run = client.create_run(
            str(tiny_model_dir),
            group_size=3,
            prompts_per_step=2,
            sample_every=2,
            correctness_component="exact",
        )
        r = redis.Redis.from_url(valkey_url)
        settings = dataclasses.replace(server.settings, device="cpu", torch_threads=1)
        env = TrainerEnv(settings=settings, r=r, model_dir=tiny_model_dir)
        stored = RunStore(r).get_run(run.run_id)
        assert (stored.config.sample_every, stored.config.correctness_component) == (2, "exact")
        echoed = client.get_run(run.run_id).info  # GetRun echoes both
        assert (echoed.sample_every, echoed.correctness_component) == (2, "exact")
        worker = env.worker()
        try:
            env.push_groups(stored, 4)
            assert worker.train_once(run.run_id) and worker.train_once(run.run_id)
        finally:
            worker.close()
        _info, everything = read_events(client, run.run_id)  # WatchRun up to now
        events = [e for e in everything if e.kind == EventKind.SAMPLE]
    assert [e.version for e in events] == [2]  # every 2 steps
    assert len(events[0].samples) == 2 and events[0].samples[0].prompt == "What is 1 + 1?"

    out = tmp_path / "run.csv"
    assert (
        main(["--address", server.address, "--api-key", key, "runs", "export", run.run_id, "--out", str(out)])
        == 0
    )
    lines = [json.loads(line) for line in (tmp_path / "run.samples.jsonl").read_text().splitlines()]
    assert [(line["step"], line["prompt"]) for line in lines] == [(2, "What is 1 + 1?")] * 2
    assert lines[0]["reward"] == events[0].samples[0].reward
