"""Presets, overrides, validation messages, and the ListMethods catalog."""

from __future__ import annotations

import pytest
from support.algorithms import ISSUE_PRESETS

from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import PRESETS, list_methods, resolve_method
from policyopt.workers.algorithms.registry import ALL_REGISTRIES

EXPECTED_PRESETS = set(ISSUE_PRESETS)


def test_every_preset_exists_and_resolves() -> None:
    assert set(PRESETS) >= EXPECTED_PRESETS
    for name in EXPECTED_PRESETS:
        spec = resolve_method(MethodChoice(preset=name))
        assert spec.name == name
        assert PRESETS[name].description


def test_needs_follow_the_choices() -> None:
    assert resolve_method(MethodChoice(preset="ppo")).needs_critic
    assert resolve_method(MethodChoice(preset="remax")).needs_greedy_baseline
    assert resolve_method(MethodChoice(preset="reinforce_pp")).needs_reference
    grpo = resolve_method(MethodChoice(preset="grpo"))
    assert not (grpo.needs_critic or grpo.needs_reference or grpo.needs_greedy_baseline)
    assert resolve_method(MethodChoice(preset="grpo", trajectory_side={"kl.coef": 0.04})).needs_reference


def test_dapo_group_filter_exposes_rounds_and_judges_raw_rewards() -> None:
    group_filter = resolve_method(MethodChoice(preset="dapo")).group_filter
    assert group_filter.enabled and group_filter.max_extra_rounds == 3
    assert not group_filter.keep([1.0, 1.0, 1.0])
    assert group_filter.keep([1.0, 0.0, 1.0])
    assert not resolve_method(MethodChoice(preset="grpo")).group_filter.enabled


def test_override_forms_switch_and_edit_choices() -> None:
    spec = resolve_method(
        MethodChoice(
            preset="grpo",
            reward_side={
                "estimator": {"name": "gae", "lam": 0.9},
                "critic": "value_head",
                "critic.value_clip": 0.5,
            },
            trajectory_side={"objective.eps_high": 0.28, "epochs": 2.0, "aggregation": "token_mean"},
        )
    )
    assert spec.reward_side.estimator.name == "gae" and spec.reward_side.estimator.params.lam == 0.9
    assert spec.reward_side.critic.params.value_clip == 0.5
    assert spec.trajectory_side.objective.params.eps_high == 0.28
    assert spec.trajectory_side.epochs == 2 and isinstance(spec.trajectory_side.epochs, int)
    assert spec.trajectory_side.aggregation.name == "token_mean"


def test_list_slot_overrides_replace_and_edit_members() -> None:
    spec = resolve_method(
        MethodChoice(
            preset="grpo",
            reward_side={
                "shaping": ["length_penalty", {"name": "kl_penalty", "coef": 0.2}],
                "shaping.kl_penalty.estimator": "k3",
            },
        )
    )
    names = [c.name for c in spec.reward_side.shaping]
    assert names == ["length_penalty", "kl_penalty"]
    assert spec.reward_side.shaping[1].params.coef == 0.2
    assert spec.reward_side.shaping[1].params.estimator == "k3"
    assert spec.needs_reference


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (
            MethodChoice(preset="grpo", reward_side={"estimator": "gae"}),
            "needs values.*set reward_side.critic to 'value_head'",
        ),
        (MethodChoice(preset="ppo", reward_side={"critic": "none"}), "needs values"),
        (
            MethodChoice(preset="grpo", reward_side={"critic": "value_head"}),
            "provides values that no choice uses",
        ),
        (MethodChoice(preset="nope"), "known presets: .*cispo, dapo, .*dr_grpo, grpo"),
        (
            MethodChoice(preset="grpo", reward_side={"estimator": "nope"}),
            "unknown reward_side.estimator 'nope'; known: .*grpo",
        ),
        (
            MethodChoice(preset="grpo", reward_side={"colour": 1}),
            "unknown field reward_side.colour; known fields: estimator",
        ),
        (
            MethodChoice(preset="grpo", reward_side={"estimator.lam": 1}),
            "unknown parameter .*lam; known parameters: scale, eps",
        ),
        (
            MethodChoice(preset="grpo", reward_side={"estimator.scale": "median"}),
            "one of: group_std, batch_std, none",
        ),
        (MethodChoice(preset="grpo", trajectory_side={"epochs": 1.5}), "epochs must be int"),
        (MethodChoice(preset="grpo", trajectory_side={"epochs": 0}), "epochs must be >= 1"),
        (MethodChoice(preset="grpo", trajectory_side={"objective.eps_low": 1.5}), "eps_low must be in"),
        (MethodChoice(preset="grpo", trajectory_side={"kl.coef": -1}), "coef must be >= 0"),
        (MethodChoice(preset="grpo", reward_side={"shaping.kl_penalty.coef": 1}), "not in shaping"),
        (MethodChoice(preset="grpo", reward_side={"shaping": ["length_penalty", "length_penalty"]}), "twice"),
        (MethodChoice(preset="grpo", trajectory_side={"entropy_coef": True}), "entropy_coef must be float"),
    ],
)
def test_invalid_choices_say_what_to_fix(choice: MethodChoice, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve_method(choice)


def test_list_methods_covers_every_registered_choice_and_preset() -> None:
    choices, presets = list_methods()
    listed = {(c.axis, c.name) for c in choices}
    for registry in ALL_REGISTRIES:
        for name in registry.names():
            assert (registry.path, name) in listed
    assert {p.name for p in presets} >= EXPECTED_PRESETS
    assert all(c.rationale for c in choices)
    grpo = next(c for c in choices if c.name == "grpo" and c.axis == "reward_side.estimator")
    assert [p.name for p in grpo.parameters] == ["scale", "eps"] and all(p.doc for p in grpo.parameters)
    settings = next(c for c in choices if c.axis == "trajectory_side.settings")
    assert {p.name for p in settings.parameters} == {"entropy_coef", "epochs", "mini_batches"}


def test_preset_info_round_trips_through_overrides() -> None:
    _, presets = list_methods()
    for info in presets:
        rebuilt = resolve_method(
            MethodChoice(preset="grpo", reward_side=info.reward_side, trajectory_side=info.trajectory_side)
        )
        original = PRESETS[info.name].spec
        assert rebuilt.reward_side == original.reward_side
        assert rebuilt.trajectory_side == original.trajectory_side
