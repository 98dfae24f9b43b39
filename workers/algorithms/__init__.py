"""The method library: every RL method is a reward-side choice x a trajectory-side choice.

Pure torch: nothing here imports Redis, gRPC or settings. Public surface::

    resolve_method(MethodChoice) -> MethodSpec        preset + overrides, validated (InvalidArgument)
    pin_method(MethodSpec) -> ResolvedMethod          every field of both axes, stored in the run
    method_from_pinned(ResolvedMethod) -> MethodSpec  rebuilt without presets; run_method(RunConfig) picks
    list_methods() -> (list[ChoiceInfo], list[PresetInfo])
    MethodSpec.needs_critic / needs_reference / needs_greedy_baseline / group_filter / name
    detect_failures(metrics, spec) -> list[DiagnosticWarning]
    selective_log_softmax(hidden, weight, targets, ...) -> (logp, entropy)

Registries (``registry.py``) hold the choices; presets (``presets.py``) name combinations of them.
"""

from policyopt.workers.algorithms.catalog import ChoiceInfo, PresetInfo, list_methods, side_to_overrides
from policyopt.workers.algorithms.diagnostics import DiagnosticWarning, detect_failures
from policyopt.workers.algorithms.logprobs import selective_log_softmax
from policyopt.workers.algorithms.params import ParameterInfo
from policyopt.workers.algorithms.presets import PRESETS, Preset
from policyopt.workers.algorithms.resolve import (
    method_from_pinned,
    override_method,
    pin_method,
    resolve_method,
    run_method,
    validate_spec,
)
from policyopt.workers.algorithms.spec import Choice, GroupFilter, MethodSpec, RewardSide, TrajectorySide

__all__ = [
    "PRESETS",
    "Choice",
    "ChoiceInfo",
    "DiagnosticWarning",
    "GroupFilter",
    "MethodSpec",
    "ParameterInfo",
    "Preset",
    "PresetInfo",
    "RewardSide",
    "TrajectorySide",
    "detect_failures",
    "list_methods",
    "method_from_pinned",
    "override_method",
    "pin_method",
    "resolve_method",
    "run_method",
    "selective_log_softmax",
    "side_to_overrides",
    "validate_spec",
]
