"""Responses become SDK dataclasses: the pinned method of a run and of an adapter version, a run's sampling
and reward-watch settings."""

from __future__ import annotations

from policyopt.client import MethodSettings
from policyopt.client._convert import run_from_proto, version_from_proto
from policyopt.client.structs import dict_to_struct
from policyopt.v1 import policyopt_pb2 as pb

PINNED = pb.MethodSpec(
    preset="dapo",
    reward_side=dict_to_struct({"estimator": {"name": "grpo", "scale": True}}),
    trajectory_side=dict_to_struct({"loss": {"name": "clip", "clip_high": 0.28}, "epochs": 1}),
)
SETTINGS = MethodSettings(
    preset="dapo",
    reward_side={"estimator": {"name": "grpo", "scale": True}},
    trajectory_side={"loss": {"name": "clip", "clip_high": 0.28}, "epochs": 1},
)


def test_a_run_carries_its_resolved_method_with_every_field() -> None:
    info = run_from_proto(pb.Run(run_id="run-1", method=pb.MethodSpec(preset="dapo"), resolved_method=PINNED))
    assert info.method == "dapo"
    assert info.resolved_method == SETTINGS
    assert type(info.resolved_method.trajectory_side["epochs"]) is int


def test_a_run_recorded_before_methods_were_pinned_has_an_empty_resolved_method() -> None:
    assert run_from_proto(pb.Run(run_id="run-1")).resolved_method == MethodSettings("", {}, {})


def test_an_adapter_version_has_its_resolved_method_only_when_the_server_sent_one() -> None:
    assert version_from_proto(pb.AdapterVersion(run_id="run-1", version=1)).resolved_method is None
    pinned = version_from_proto(pb.AdapterVersion(run_id="run-1", version=1, resolved_method=PINNED))
    assert pinned.resolved_method == SETTINGS
    empty = version_from_proto(pb.AdapterVersion(resolved_method=pb.MethodSpec()))
    assert empty.resolved_method == MethodSettings("", {}, {})


def test_a_run_carries_its_correctness_component_and_sample_every() -> None:
    info = run_from_proto(pb.Run(run_id="run-1", correctness_component="exact", sample_every=5))
    assert (info.correctness_component, info.sample_every) == ("exact", 5)
    assert (run_from_proto(pb.Run()).correctness_component, run_from_proto(pb.Run()).sample_every) == ("", 0)
