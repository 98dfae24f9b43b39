"""A resolved method pinned as JSON (every field of both axes) and rebuilt from it without presets."""

from __future__ import annotations

import dataclasses

import pytest

from policyopt.client.structs import dict_to_struct, struct_to_dict
from policyopt.core.errors import InvalidArgument
from policyopt.core.types import MethodChoice, ResolvedMethod, RunConfig, from_json, to_json
from policyopt.workers.algorithms import (
    PRESETS,
    Choice,
    method_from_pinned,
    pin_method,
    resolve_method,
    run_method,
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_pinned_preset_rebuilds_the_same_method_through_json_and_protobuf(preset: str) -> None:
    spec = resolve_method(MethodChoice(preset))
    pinned = pin_method(spec)
    assert method_from_pinned(from_json(ResolvedMethod, to_json(pinned))) == spec
    through_proto = ResolvedMethod(
        pinned.preset,
        struct_to_dict(dict_to_struct(pinned.reward_side)),
        struct_to_dict(dict_to_struct(pinned.trajectory_side)),
    )
    assert method_from_pinned(through_proto) == spec


def test_the_pinned_form_names_every_field_of_both_axes_with_all_params() -> None:
    pinned = pin_method(resolve_method(MethodChoice("dapo", trajectory_side={"objective.eps_high": 0.3})))
    assert set(pinned.reward_side) == {"estimator", "shaping", "group_filter", "critic"}
    assert set(pinned.trajectory_side) == {
        "objective", "aggregation", "kl", "mismatch_correction", "entropy_coef", "epochs", "mini_batches",
    }  # fmt: skip
    assert pinned.trajectory_side["objective"] == {
        "name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.3, "dual_clip": 0.0,
    }  # fmt: skip
    assert pinned.reward_side["group_filter"] == {
        "name": "zero_variance",
        "max_extra_rounds": 3,
        "min_std": 0.0,
    }


def test_a_pinned_method_ignores_later_preset_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = pin_method(resolve_method(MethodChoice("grpo")))
    original = PRESETS["grpo"]
    side = dataclasses.replace(original.spec.trajectory_side, objective=Choice("vanilla_pg"))
    edited = dataclasses.replace(original, spec=dataclasses.replace(original.spec, trajectory_side=side))
    monkeypatch.setitem(PRESETS, "grpo", edited)

    assert resolve_method(MethodChoice("grpo")).trajectory_side.objective.name == "vanilla_pg"
    assert method_from_pinned(pinned).trajectory_side.objective.name == "ppo_clip"
    config = RunConfig(base_model="tiny", method=MethodChoice("grpo"), resolved_method=pinned)
    assert run_method(config).trajectory_side.objective.name == "ppo_clip"


def test_a_run_recorded_before_pinning_resolves_its_choice() -> None:
    config = RunConfig(base_model="tiny", method=MethodChoice("rloo"))
    assert run_method(config) == resolve_method(MethodChoice("rloo"))


@pytest.mark.parametrize(
    ("reward_side", "message"),
    [
        ({"estimator": {"name": "grpo"}, "bogus": 1}, "unknown field reward_side.bogus"),
        ({"shaping": []}, "lacks reward_side.estimator"),
        ({"estimator": {"scale": "none"}}, "needs a 'name'"),
        ({"estimator": {"name": "no_such"}}, "unknown reward_side.estimator 'no_such'"),
    ],
)
def test_a_damaged_pinned_method_says_what_is_wrong(reward_side: dict[str, object], message: str) -> None:
    pinned = pin_method(resolve_method(MethodChoice("grpo")))
    with pytest.raises(InvalidArgument, match=message):
        method_from_pinned(dataclasses.replace(pinned, reward_side=reward_side))
