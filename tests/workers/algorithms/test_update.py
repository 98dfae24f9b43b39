"""PolicyUpdater on a tiny LoRA Llama: exact log-probs, exact gradient accumulation, every preset, resume."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from peft import PeftModel
from support.algorithms import ISSUE_PRESETS, build_lora_model, make_groups

from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import resolve_method
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import build_micro_batch, collate_groups
from policyopt.workers.train.update import PolicyUpdater


def updater(model: PeftModel, preset: str, **overrides: object) -> PolicyUpdater:
    spec = resolve_method(MethodChoice(preset=preset, trajectory_side=overrides))
    return PolicyUpdater(
        model, spec, learning_rate=1e-2, pad_token_id=0, micro_batch_size=4, max_completion_length=6
    )


def full_forward_logps(model: PeftModel, groups: list, temperature: float) -> list[list[float]]:
    """Log-probs of each completion token from the model's ordinary forward, one sequence at a time."""
    result = []
    for group in groups:
        for trajectory in group.trajectories:
            ids = torch.tensor([group.prompt_ids + trajectory.completion_ids])
            logits = model(input_ids=ids).logits[0].float() / temperature
            p = len(group.prompt_ids)
            logp = torch.log_softmax(logits[p - 1 : -1], dim=-1)
            result.append(
                logp.gather(1, torch.tensor(trajectory.completion_ids).unsqueeze(1)).squeeze(1).tolist()
            )
    return result


def test_scored_log_probs_equal_the_full_forward_at_completion_positions(lora_model: PeftModel) -> None:
    groups = make_groups()
    batch = collate_groups(groups, pad_token_id=0)
    forward = PolicyForward(lora_model, temperature=0.8)
    micro = build_micro_batch(batch, list(range(batch.size)), 0, torch.device("cpu"))
    with torch.no_grad():
        scored = forward.score(micro).logp_b_T
        reference = forward.score_reference(micro)
        expected = full_forward_logps(lora_model, groups, 0.8)
        with lora_model.disable_adapter():
            expected_reference = full_forward_logps(lora_model, groups, 0.8)
    for b in range(batch.size):
        trained = batch.mask_B_T[b] > 0
        n = len(expected[b])
        torch.testing.assert_close(
            scored[b, :n][trained[:n]], torch.tensor(expected[b])[trained[:n]], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            reference[b, :n][trained[:n]],
            torch.tensor(expected_reference[b])[trained[:n]],
            atol=1e-5,
            rtol=1e-5,
        )
        assert (
            float(scored[b, n:].abs().sum()) == 0.0 and float(scored[b, :n][~trained[:n]].abs().sum()) == 0.0
        )
    assert not torch.allclose(scored, reference)  # the adapter (random B) matters


def gradients(model: PeftModel, preset: str, micro_batch_size: int) -> list[torch.Tensor]:
    spec = resolve_method(MethodChoice(preset=preset))
    updater = PolicyUpdater(
        model,
        spec,
        learning_rate=1e-2,
        pad_token_id=0,
        micro_batch_size=micro_batch_size,
        max_completion_length=6,
    )
    prepared = updater.prepare(make_groups(num_groups=3, group_size=4, seed=5))
    model.zero_grad(set_to_none=True)
    updater.accumulate_gradients(prepared, list(range(prepared.batch.size)))
    return [p.grad.clone() for p in updater.policy_parameters if p.grad is not None]


@pytest.mark.parametrize("preset", ["grpo", "dapo", "rloo", "dr_grpo", "cispo", "gspo", "decoupled_ppo"])
def test_gradient_is_the_same_for_any_micro_batch_size(lora_model: PeftModel, preset: str) -> None:
    whole = gradients(lora_model, preset, micro_batch_size=12)
    for size in (1, 5):
        split = gradients(lora_model, preset, micro_batch_size=size)
        assert len(split) == len(whole) > 0
        for a, b in zip(split, whole, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("preset", ISSUE_PRESETS)
def test_every_preset_step_changes_the_adapter(preset: str) -> None:
    model = build_lora_model()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    update = updater(model, preset)
    metrics = update.step(make_groups(seed=11))
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    for key in ("reward/mean", "reward/zero_variance_group_fraction", "reward/advantage_mean", "trajectory/entropy",
                "trajectory/ratio_mean", "trajectory/mismatch_kl", "trajectory/response_length_mean", "trajectory/grad_norm"):  # fmt: skip
        assert key in metrics, key
    assert all(k.startswith(("reward/", "trajectory/")) for k in metrics)


def test_ppo_trains_its_critic_and_reuses_samples() -> None:
    update = updater(build_lora_model(), "ppo")
    assert update.critic is not None
    critic_before = [p.detach().clone() for p in update.critic.parameters()]
    metrics = update.step(make_groups())
    assert metrics["trajectory/optimizer_steps"] == 4.0  # 2 epochs x 2 mini-batches
    assert "trajectory/value_loss" in metrics
    assert any(
        not torch.equal(a, b.detach()) for a, b in zip(critic_before, update.critic.parameters(), strict=True)
    )


def test_kl_to_reference_is_reported_when_configured() -> None:
    metrics = updater(build_lora_model(), "grpo", **{"kl.coef": 0.1}).step(make_groups())
    assert metrics["trajectory/kl_ref"] > 0  # the random adapter moved the policy away from the base


def test_resume_from_state_dict_continues_exactly() -> None:
    groups_a, groups_b = make_groups(seed=1), make_groups(seed=2)
    model = build_lora_model()
    first = updater(model, "ppo")
    first.step(groups_a)
    model_copy = copy.deepcopy(model)
    state = copy.deepcopy(first.state_dict())
    first.step(groups_b)
    resumed = updater(model_copy, "ppo")
    resumed.load_state_dict(state)
    resumed.step(groups_b)
    for a, b in zip(model.parameters(), model_copy.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert first.critic is not None and resumed.critic is not None
    for a, b in zip(first.critic.parameters(), resumed.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_dapo_drops_zero_variance_groups_before_training() -> None:
    groups = make_groups(num_groups=3)
    flat = groups[0]
    groups[0] = dataclasses.replace(
        flat, trajectories=[dataclasses.replace(t, reward=1.0) for t in flat.trajectories]
    )
    groups[1] = dataclasses.replace(
        groups[1],
        trajectories=[
            dataclasses.replace(t, reward=float(i % 2)) for i, t in enumerate(groups[1].trajectories)
        ],
    )
    metrics = updater(build_lora_model(), "dapo").step(groups)
    assert metrics["reward/groups_filtered"] >= 1.0
    assert metrics["reward/zero_variance_group_fraction"] >= 1 / 3


def test_a_step_with_every_group_filtered_changes_nothing() -> None:
    groups = [
        dataclasses.replace(g, trajectories=[dataclasses.replace(t, reward=0.0) for t in g.trajectories])
        for g in make_groups()
    ]
    model = build_lora_model()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = updater(model, "dapo").step(groups)
    assert metrics["trajectory/optimizer_steps"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_remax_without_greedy_baseline_fails_clearly() -> None:
    groups = [dataclasses.replace(g, baseline_reward=None) for g in make_groups()]
    with pytest.raises(ValueError, match="baseline_reward"):
        updater(build_lora_model(), "remax").step(groups)


def test_mismatched_samples_raise_a_warning_with_axis_and_suggestion() -> None:
    update = updater(build_lora_model(), "dr_grpo")  # no mismatch correction (grpo has token_tis)
    update.step(make_groups())  # sampler log-probs are random, far from the model's
    warning = next(
        w for w in update.last_warnings if w.name == "stale_or_mismatched_samples_clipping_inactive"
    )
    assert warning.axis == "trajectory_side" and "mismatch_correction" in warning.suggestion
    assert update.warnings() == update.last_warnings
