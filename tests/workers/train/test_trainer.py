"""TrainerWorker in-process: versions published as PEFT directories, acks, resume, recovery, leases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from support.trainer import StandInUpdater, TrainerEnv
from transformers import AutoModelForCausalLM

from policyopt.core.errors import FailedPrecondition
from policyopt.core.types import EventKind, MethodChoice, PromptTask, RunStatus, TrajectoryGroup, from_json
from policyopt.state import LocalAdapterStore, verify_files
from policyopt.state.queue import TRAINER_GROUP, WorkQueue, groups_stream, prompts_stream
from policyopt.state.runs import RunStore


def _dapo(max_extra_rounds: int) -> MethodChoice:
    """The dapo preset (zero-variance group filter) with a chosen number of extra sampling rounds."""
    return MethodChoice("dapo", reward_side={"group_filter.max_extra_rounds": max_extra_rounds})


def _pending(env: TrainerEnv, run_id: str) -> int:
    return int(env.r.xpending(groups_stream(run_id), TRAINER_GROUP)["pending"])


def _store(env: TrainerEnv) -> LocalAdapterStore:
    return LocalAdapterStore(env.settings.adapter_root)


def _lora_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_two_steps_publish_consecutive_loadable_versions_and_ack_each_group_once(
    trainer_env: TrainerEnv,
) -> None:
    run = trainer_env.create_run()
    submitted = trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is True
    assert worker.train_once(run.run_id) is True

    store = _store(trainer_env)
    assert store.list_versions(run.run_id) == [1, 2]
    trained: list[str] = []
    for version in (1, 2):
        path = store.open_version(run.run_id, version, verify=True)
        manifest = store.read_manifest(run.run_id, version)
        verify_files(path, manifest)
        assert set(manifest.files) == {"adapter_config.json", "adapter_model.safetensors"}
        assert (manifest.version, manifest.step, manifest.method) == (version, version, "grpo")
        assert "reward/mean" in manifest.metrics
        trained += manifest.group_ids
        base = AutoModelForCausalLM.from_pretrained(trainer_env.model_dir)
        PeftModel.from_pretrained(base, str(path))  # loads as a PEFT adapter
    assert trained == submitted  # each group once, in queue order

    v1, v2 = (_lora_weights(store.open_version(run.run_id, v)) for v in (1, 2))
    b_keys = [k for k in v1 if "lora_B" in k]
    assert b_keys and any(v1[k].abs().sum() > 0 for k in b_keys)  # LoRA B starts at zero
    assert any(not torch.equal(v1[k], v2[k]) for k in v1)

    state = RunStore(trainer_env.r).get_run(run.run_id)
    assert (state.version, state.step, state.groups_trained) == (2, 2, 4)
    assert _pending(trainer_env, run.run_id) == 0
    assert trainer_env.r.xlen(groups_stream(run.run_id)) == 0
    kinds = [e.kind for e in RunStore(trainer_env.r).read_events(run.run_id)]
    assert kinds.count(EventKind.STEP) == 2 and kinds.count(EventKind.VERSION) == 2


def test_short_batch_waits_with_groups_pending(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(prompts_per_step=3)
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is False
    assert _pending(trainer_env, run.run_id) == 2
    assert _store(trainer_env).list_versions(run.run_id) == []

    trainer_env.push_groups(run, 1)
    assert worker.train_once(run.run_id) is True
    assert _pending(trainer_env, run.run_id) == 0


def test_groups_older_than_max_staleness_go_back_to_the_rollout_workers(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(prompts_per_step=2, max_staleness=1)
    worker = trainer_env.worker()
    trainer_env.push_groups(run, 2)
    trainer_env.push_groups(run, 2, adapter_version=1)
    assert worker.train_once(run.run_id) and worker.train_once(run.run_id)  # versions 1 and 2

    stale = trainer_env.push_groups(run, 2, adapter_version=0)  # 2 updates behind the policy at v2
    fresh = trainer_env.push_groups(run, 2, adapter_version=1)
    assert worker.train_once(run.run_id) is True
    manifest = _store(trainer_env).read_manifest(run.run_id, 3)
    assert manifest.group_ids == fresh and not set(stale) & set(manifest.group_ids)
    assert manifest.metrics["trainer/groups_resampled_stale"] == 2.0
    assert manifest.metrics["trainer/staleness_mean"] == 1.0  # the fresh groups: v1 data, trained at v2
    assert manifest.metrics["trainer/staleness_max"] == 1.0
    first = _store(trainer_env).read_manifest(run.run_id, 1)
    assert first.metrics["trainer/staleness_mean"] == first.metrics["trainer/staleness_max"] == 0.0
    requeued = [
        from_json(PromptTask, f[b"data"]) for _id, f in trainer_env.r.xrange(prompts_stream(run.run_id))
    ]
    assert [(t.run_id, t.prompt) for t in requeued] == [(run.run_id, "What is 1 + 1?")] * 2
    assert WorkQueue(trainer_env.r).queued_prompts(run.run_id) == 2
    assert _pending(trainer_env, run.run_id) == 0 and trainer_env.r.xlen(groups_stream(run.run_id)) == 0


def test_max_steps_completes_the_run(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(max_steps=1)
    trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is True
    assert RunStore(trainer_env.r).get_run(run.run_id).status == RunStatus.COMPLETED
    assert run.run_id not in RunStore(trainer_env.r).active_run_ids()
    assert worker.train_once(run.run_id) is False
    assert _store(trainer_env).list_versions(run.run_id) == [1]


def test_restart_resumes_lora_and_optimizer_state(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run()
    trainer_env.push_groups(run, 4)
    first = trainer_env.worker()
    assert first.train_once(run.run_id)
    first.close()

    second = trainer_env.worker()
    assert second.train_once(run.run_id)
    session = second._sessions[run.run_id]
    assert isinstance(session.updater, StandInUpdater) and session.updater.loaded_state is not None
    checkpoints = Path(trainer_env.settings.data_dir) / "checkpoints" / run.run_id
    assert sorted(p.name for p in checkpoints.iterdir()) == ["v000001", "v000002"]
    assert _store(trainer_env).list_versions(run.run_id) == [1, 2]


def test_crash_between_publish_and_commit_is_finished_without_retraining(
    trainer_env: TrainerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = trainer_env.create_run()
    submitted = trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()

    def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionError("trainer died before the commit")

    monkeypatch.setattr(RunStore, "commit_step", crash)
    with pytest.raises(ConnectionError):
        worker.train_once(run.run_id)
    monkeypatch.undo()
    assert RunStore(trainer_env.r).get_run(run.run_id).version == 0
    assert _store(trainer_env).list_versions(run.run_id) == [1]
    worker.close()

    successor = trainer_env.worker()
    assert successor.train_once(run.run_id)  # finishes v1's commit, then trains v2 on the other groups
    store = _store(trainer_env)
    ids = [g for v in (1, 2) for g in store.read_manifest(run.run_id, v).group_ids]
    assert ids == submitted
    assert RunStore(trainer_env.r).get_run(run.run_id).version == 2
    assert _pending(trainer_env, run.run_id) == 0


def test_dynamic_sampling_drops_zero_variance_groups_and_acks_them_with_the_step(
    trainer_env: TrainerEnv,
) -> None:
    run = trainer_env.create_run(prompts_per_step=2, method=_dapo(max_extra_rounds=2))
    flat = trainer_env.push_groups(run, 2, zero_variance=True)
    good = trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id)
    manifest = _store(trainer_env).read_manifest(run.run_id, 1)
    assert manifest.group_ids == good and not set(flat) & set(manifest.group_ids)
    assert manifest.metrics["trainer/groups_dropped"] == 2
    assert _pending(trainer_env, run.run_id) == 0
    assert RunStore(trainer_env.r).get_run(run.run_id).groups_trained == 2


def test_dynamic_sampling_sends_dropped_prompts_back_when_the_queue_runs_dry(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(prompts_per_step=2, method=_dapo(max_extra_rounds=1))
    good = trainer_env.push_groups(run, 1)
    flat = trainer_env.push_groups(run, 1, zero_variance=True)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id) is False  # one group kept, the flat one resampled
    (requeued,) = [
        from_json(PromptTask, f[b"data"]) for _id, f in trainer_env.r.xrange(prompts_stream(run.run_id))
    ]
    assert (requeued.run_id, requeued.attempt) == (run.run_id, 1)
    assert _pending(trainer_env, run.run_id) == 1  # the kept group waits; the flat one is gone

    trainer_env.push_groups(run, 1, zero_variance=True, attempt=1)  # its resample: flat again, out of rounds
    assert worker.train_once(run.run_id) is False
    assert trainer_env.r.xlen(prompts_stream(run.run_id)) == 1  # not sent back a second time
    more = trainer_env.push_groups(run, 1)
    assert worker.train_once(run.run_id) is True
    manifest = _store(trainer_env).read_manifest(run.run_id, 1)
    assert manifest.group_ids == good + more and not set(flat) & set(manifest.group_ids)
    assert _pending(trainer_env, run.run_id) == 0


def test_dynamic_sampling_limit_trains_a_short_batch_with_a_warning(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(prompts_per_step=2, method=_dapo(max_extra_rounds=1))
    trainer_env.push_groups(run, 3, zero_variance=True)
    good = trainer_env.push_groups(run, 1)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id)
    assert _store(trainer_env).read_manifest(run.run_id, 1).group_ids == good
    events = RunStore(trainer_env.r).read_events(run.run_id)
    assert any(e.kind == EventKind.WARNING and "limit" in e.message for e in events)


def test_only_one_trainer_holds_a_run(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run()
    trainer_env.push_groups(run, 4)
    first, second = trainer_env.worker(), trainer_env.worker()
    second.consumer = "trainer-other"

    assert first.train_once(run.run_id)
    assert second.train_once(run.run_id) is False
    first.close()
    assert second.train_once(run.run_id)  # the released lease moves on at once
    assert RunStore(trainer_env.r).get_run(run.run_id).version == 2


def test_commit_without_the_lease_is_refused(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run()
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()
    assert worker._session(run.run_id) is not None
    key, _token = worker.leases.guard(run.run_id)
    trainer_env.r.set(key, "someone-else")

    with pytest.raises(FailedPrecondition):
        worker.train_once(run.run_id)
    assert RunStore(trainer_env.r).get_run(run.run_id).version == 0
    assert _pending(trainer_env, run.run_id) == 2


def test_the_dapo_preset_filter_drops_groups_on_raw_scores(trainer_env: TrainerEnv) -> None:
    run = trainer_env.create_run(prompts_per_step=2, method=MethodChoice("dapo"))
    flat = trainer_env.push_groups(run, 1, zero_variance=True)
    good = trainer_env.push_groups(run, 2)
    worker = trainer_env.worker()

    assert worker.train_once(run.run_id)
    manifest = _store(trainer_env).read_manifest(run.run_id, 1)
    assert manifest.group_ids == good and flat[0] not in manifest.group_ids
    assert (manifest.method, _pending(trainer_env, run.run_id)) == ("dapo", 0)


def test_diagnostic_warnings_become_warning_events(trainer_env: TrainerEnv) -> None:
    from policyopt.workers.algorithms.diagnostics import DiagnosticWarning

    class WarningUpdater(StandInUpdater):
        last_warnings = [
            DiagnosticWarning("most_groups_zero_variance", "reward_side", "80% flat", "harder prompts")
        ]

    run = trainer_env.create_run()
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker(
        updater_factory=lambda model, spec, config, pad, device, teacher=None: WarningUpdater(
            model, spec, learning_rate=config.learning_rate, pad_token_id=pad, device=device
        )
    )
    assert worker.train_once(run.run_id)
    warnings = [e for e in RunStore(trainer_env.r).read_events(run.run_id) if e.kind == EventKind.WARNING]
    assert len(warnings) == 1 and warnings[0].version == 1
    assert "most_groups_zero_variance (reward_side): 80% flat" in warnings[0].message


def test_train_step_span_continues_the_groups_trace_with_a_publish_child(
    trainer_env: TrainerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from policyopt.core import telemetry
    from policyopt.workers.train import step as step_module

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer", lambda name="policyopt": provider.get_tracer(name))
    monkeypatch.setattr(step_module, "tracer", lambda name="policyopt": provider.get_tracer(name))
    carrier: dict[str, str] = {}
    with provider.get_tracer("test").start_as_current_span("rollout") as rollout:
        propagate.inject(carrier, context=trace.set_span_in_context(rollout))

    run = trainer_env.create_run()
    trainer_env.push_groups(run, 2, trace=carrier)
    assert trainer_env.worker().train_once(run.run_id)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    step, publish = spans["train_step"], spans["publish"]
    assert step.context.trace_id == rollout.get_span_context().trace_id
    assert step.parent is not None and step.parent.span_id == rollout.get_span_context().span_id
    assert publish.parent is not None and publish.parent.span_id == step.context.span_id


@pytest.mark.parametrize("preset", ["grpo", "ppo"])
def test_the_real_policy_updater_trains_publishes_and_resumes(trainer_env: TrainerEnv, preset: str) -> None:
    from policyopt.workers.train.session import build_updater

    run = trainer_env.create_run(method=MethodChoice(preset), learning_rate=1e-3)
    trainer_env.push_groups(run, 4)
    first = trainer_env.worker(updater_factory=build_updater)
    assert first.train_once(run.run_id)
    first.close()
    second = trainer_env.worker(updater_factory=build_updater)
    assert second.train_once(run.run_id)  # resumes from v1's adapter and trainer state

    store = _store(trainer_env)
    manifest = store.read_manifest(run.run_id, 2)
    assert "trajectory/loss" in manifest.metrics and manifest.method == preset
    has_critic = "critic.safetensors" in manifest.files
    assert has_critic == (preset == "ppo")


def test_run_forever_trains_until_stopped_then_releases_its_leases(trainer_env: TrainerEnv) -> None:
    import threading
    import time

    from policyopt.workers.train.lease import lease_key

    run = trainer_env.create_run()
    trainer_env.push_groups(run, 4)
    worker = trainer_env.worker()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), kwargs={"idle_s": 0.05})
    thread.start()
    deadline = time.monotonic() + 60
    while RunStore(trainer_env.r).get_run(run.run_id).version < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert RunStore(trainer_env.r).get_run(run.run_id).version == 2
    assert trainer_env.r.get(lease_key(run.run_id)) is None


def test_an_update_that_keeps_failing_fails_the_run_and_keeps_its_groups(trainer_env: TrainerEnv) -> None:
    class BrokenUpdater(StandInUpdater):
        def step(self, groups: list[TrajectoryGroup], should_continue: object = None) -> dict[str, float]:
            raise ValueError("prompt longer than the context")

    run = trainer_env.create_run()
    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker(
        updater_factory=lambda model, spec, config, pad, device, teacher=None: BrokenUpdater(
            model, spec, learning_rate=config.learning_rate, pad_token_id=pad, device=device
        ),
        retry_backoff_s=0.0,
    )
    for _attempt in range(3):
        assert worker._train_guarded(run.run_id) is False

    state = RunStore(trainer_env.r).get_run(run.run_id)
    assert state.status == RunStatus.FAILED and "prompt longer than the context" in state.error
    errors = [e for e in RunStore(trainer_env.r).read_events(run.run_id) if e.kind == EventKind.ERROR]
    assert len(errors) == 3 and "attempt 2 of 3" in errors[1].message and "3 times" in errors[2].message
    assert _pending(trainer_env, run.run_id) == 2 and _store(trainer_env).list_versions(run.run_id) == []


def test_a_run_trains_with_its_pinned_method_after_its_preset_is_edited(
    trainer_env: TrainerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from policyopt.workers.algorithms import PRESETS, Choice, method_from_pinned, resolve_method
    from policyopt.workers.train.session import build_updater

    run = trainer_env.create_run(method=MethodChoice("grpo"), learning_rate=1e-3)
    pinned = run.config.resolved_method
    assert pinned is not None
    grpo = PRESETS["grpo"]
    edited_side = dataclasses.replace(grpo.spec.trajectory_side, objective=Choice("vanilla_pg"), epochs=3)
    monkeypatch.setitem(
        PRESETS,
        "grpo",
        dataclasses.replace(grpo, spec=dataclasses.replace(grpo.spec, trajectory_side=edited_side)),
    )
    assert resolve_method(MethodChoice("grpo")).trajectory_side.epochs == 3  # the edit is live

    trainer_env.push_groups(run, 2)
    worker = trainer_env.worker(updater_factory=build_updater)
    assert worker.train_once(run.run_id)

    session = worker._sessions[run.run_id]
    assert session.spec == method_from_pinned(pinned)
    assert (session.spec.trajectory_side.objective.name, session.spec.trajectory_side.epochs) == (
        "ppo_clip",
        1,
    )
    manifest = _store(trainer_env).read_manifest(run.run_id, 1)
    assert manifest.resolved_method == pinned and manifest.method == "grpo"
    assert RunStore(trainer_env.r).get_version(run.run_id, 1).resolved_method == pinned
