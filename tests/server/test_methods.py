"""CreateRun resolves a run's method once and pins it; GetRun and adapter versions return the pinned method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis

from policyopt.client import Client, InvalidArgument, MethodSettings, RewardServer, RunHandle
from policyopt.core.types import AdapterManifest
from policyopt.state import LocalAdapterStore, RunStore, WorkQueue
from policyopt.workers.algorithms import PRESETS, Choice


def _create(client: Client, model: Path, reward_endpoint: RewardServer, **options: object) -> RunHandle:
    client.register_reward_endpoint("ones", reward_endpoint.address)
    return client.create_run(
        str(model), reward_endpoint="ones", group_size=2, prompts_per_step=1, max_new_tokens=8, **options
    )


def test_create_run_pins_every_field_of_both_axes_with_the_overrides_applied(
    client_a: Client, tiny_model_dir: Path, reward_endpoint: RewardServer
) -> None:
    run = _create(
        client_a, tiny_model_dir, reward_endpoint,
        method="dapo", reward_side={"group_filter.max_extra_rounds": 5}, trajectory_side={"entropy_coef": 0.001},
    )  # fmt: skip
    pinned = run.info.resolved_method
    assert pinned.preset == "dapo"
    assert pinned.reward_side["group_filter"] == {
        "name": "zero_variance",
        "max_extra_rounds": 5,
        "min_std": 0,
    }
    assert pinned.reward_side["estimator"] == {"name": "grpo", "scale": "group_std", "eps": 1e-6}
    assert pinned.trajectory_side["objective"] == {
        "name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28, "dual_clip": 0,
    }  # fmt: skip
    assert pinned.trajectory_side["entropy_coef"] == 0.001
    # What was asked for stays visible beside it.
    assert (run.info.method, run.info.reward_side) == ("dapo", {"group_filter.max_extra_rounds": 5})


def test_editing_a_preset_leaves_an_existing_run_unchanged(
    client_a: Client, tiny_model_dir: Path, reward_endpoint: RewardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _create(client_a, tiny_model_dir, reward_endpoint, method="grpo")
    grpo = PRESETS["grpo"]
    side = dataclasses.replace(grpo.spec.trajectory_side, objective=Choice("vanilla_pg"), epochs=4)
    monkeypatch.setitem(PRESETS, "grpo", dataclasses.replace(grpo, spec=dataclasses.replace(grpo.spec, trajectory_side=side)))  # fmt: skip

    after = _create(client_a, tiny_model_dir, reward_endpoint, method="grpo")
    assert after.info.resolved_method.trajectory_side["objective"] == {
        "name": "vanilla_pg"
    }  # the edit is live
    assert after.info.resolved_method.trajectory_side["epochs"] == 4

    again = client_a.get_run(before.run_id).info.resolved_method
    assert again == before.info.resolved_method
    assert again.trajectory_side["objective"]["name"] == "ppo_clip" and again.trajectory_side["epochs"] == 1
    listed = {r.run_id: r.resolved_method for r in client_a.list_runs()}
    assert listed[before.run_id] == before.info.resolved_method


def test_an_adapter_version_carries_the_method_that_trained_it(
    client_a: Client,
    tiny_model_dir: Path,
    reward_endpoint: RewardServer,
    redis_client: redis.Redis,
    tmp_path: Path,
    server,  # the session server: its settings name the adapter store
) -> None:
    run = _create(client_a, tiny_model_dir, reward_endpoint, method="rloo")
    stored = RunStore(redis_client).get_run(run.run_id)
    files = tmp_path / "files"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")
    (files / "adapter_model.safetensors").write_bytes(b"weights")
    manifest = AdapterManifest(
        run_id=run.run_id, version=1, step=1, base_model=str(tiny_model_dir), method="rloo",
        resolved_method=stored.config.resolved_method,
    )  # fmt: skip
    published = LocalAdapterStore(server.settings.adapter_root).publish(run.run_id, 1, files, manifest)
    RunStore(redis_client).commit_step(WorkQueue(redis_client), published, [])

    (version,) = client_a.list_adapters(run.run_id)
    assert isinstance(version.resolved_method, MethodSettings)
    assert version.resolved_method == run.info.resolved_method
    pulled = client_a.pull_adapter(run.run_id, 1, tmp_path / "pulled")
    assert '"resolved_method"' in (pulled / "manifest.json").read_text()


def test_the_teacher_coef_is_pinned_as_the_estimator_coef_and_a_teacher_needs_a_method_that_uses_one(
    client_a: Client, tiny_model_dir: Path
) -> None:
    run = client_a.create_run(
        str(tiny_model_dir), method="grpo_opd", teacher_model=str(tiny_model_dir), teacher_coef=0.3
    )
    assert run.info.resolved_method.reward_side["estimator"]["coef"] == pytest.approx(0.3)
    with pytest.raises(InvalidArgument, match="a teacher is set but method 'grpo' does not use one"):
        client_a.create_run(
            str(tiny_model_dir), method="grpo", teacher_model=str(tiny_model_dir), teacher_coef=0.3
        )
    with pytest.raises(InvalidArgument, match="disagree; set lambda once"):
        client_a.create_run(
            str(tiny_model_dir), method="opd", teacher_model=str(tiny_model_dir), teacher_coef=0.3,
            reward_side={"estimator.coef": 0.5},
        )  # fmt: skip
