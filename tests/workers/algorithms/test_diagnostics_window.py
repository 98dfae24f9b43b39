"""Diagnostics over a window of steps: each warning fires on its failure and stays quiet on a healthy run.

Healthy runs are recorded in ``data/`` (bench/rl_step.py's policyopt side with the default grpo preset in
bf16, reward rising; the demo's first 30 steps, of several demo runs); so is a run that shows a failure (the demo trained 60
steps collapses onto one reply). Other failures are metric sequences built to show each one, plus a real
update on the tiny model whose groups all score the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from policyopt.core.types import MethodChoice
from policyopt.workers.algorithms import detect_failures, resolve_method
from policyopt.workers.algorithms.diagnostics_window import LONG_WINDOW_STEPS, WINDOW_STEPS, DiagnosticWindow

DATA = Path(__file__).parent / "data"
HEALTHY = json.loads((DATA / "healthy_smollm2_grpo.json").read_text())["steps"]
HEALTHY_RUNS = {
    name: json.loads((DATA / f"{name}.json").read_text())["steps"]
    for name in ("healthy_smollm2_grpo", "healthy_smollm2_grpo_eager")
}
DEMO_60 = json.loads((DATA / "demo_smollm2_60_steps.json").read_text())["steps"]
DEMO_30 = json.loads((DATA / "demo_smollm2_30_steps_runs.json").read_text())
DEMO_RUNS, DEMO_COLLAPSED_EARLY = DEMO_30["runs"], DEMO_30["collapsed_early"]
DEMO_STEPS = 30  # cli/demo.py's SIZES["smollm2"].steps
BENCH_ZERO_VARIANCE = json.loads((DATA / "bench_smollm2_grpo_zero_variance_runs.json").read_text())["runs"]


def replay(steps: list[dict[str, float]], preset: str = "grpo") -> list[list[str]]:
    """The warnings of each step when ``steps`` pass through a window, as the updater does."""
    spec, window = resolve_method(MethodChoice(preset=preset)), DiagnosticWindow()
    return [[w.name for w in detect_failures(window.observe(m), spec)] for m in steps]


def steady(metrics: dict[str, float], steps: int = WINDOW_STEPS + 1) -> list[dict[str, float]]:
    return [dict(metrics) for _ in range(steps)]


@pytest.mark.parametrize("name", sorted(HEALTHY_RUNS))
def test_the_default_preset_is_quiet_on_a_healthy_run(name: str) -> None:
    assert replay(HEALTHY_RUNS[name]) == [[] for _ in HEALTHY_RUNS[name]]


def test_the_default_demo_is_quiet_and_the_collapse_after_it_is_named() -> None:
    from policyopt.cli.demo import SIZES

    assert SIZES["smollm2"].steps == DEMO_STEPS
    warned = replay(DEMO_60)
    assert warned[:DEMO_STEPS] == [[] for _ in range(DEMO_STEPS)]
    later = {name for names in warned[DEMO_STEPS:] for name in names}
    assert later == {"mostly_zero_variance_groups", "entropy_collapse"}


@pytest.mark.parametrize("name", sorted(DEMO_RUNS))
def test_recorded_demo_runs_are_quiet(name: str) -> None:
    assert len(DEMO_RUNS[name]) == DEMO_STEPS
    assert replay(DEMO_RUNS[name]) == [[] for _ in range(DEMO_STEPS)]


def test_a_demo_run_that_settles_early_is_named_from_step_29() -> None:
    """One recorded demo run settled on a wordy reply by step 22: a real collapse, warned about as such
    once more than half of the last 40 groups have no reward variance."""
    warned = replay(DEMO_COLLAPSED_EARLY)
    assert warned[:28] == [[] for _ in range(28)]
    assert warned[28:] == [["mostly_zero_variance_groups"] for _ in range(DEMO_STEPS - 28)]


@pytest.mark.parametrize("name", sorted(BENCH_ZERO_VARIANCE))
def test_benchmark_runs_with_many_unrewarded_groups_early_are_quiet(name: str) -> None:
    """Four benchmark runs whose reward rose, though 55-75 % of 20 groups had no variance at some point:
    the 5-step rule warned on them; over 40 groups the fraction stays at or below half."""
    steps = BENCH_ZERO_VARIANCE[name]
    fractions = [m["reward/zero_variance_group_fraction"] for m in steps]
    assert max(sum(fractions[i - 5 : i]) / 5 for i in range(5, len(fractions) + 1)) > 0.5
    assert replay(steps) == [[] for _ in steps]


def test_single_noisy_steps_of_the_healthy_run_would_have_warned() -> None:
    """What the window is for: judged one step at a time, the same run trips two detectors."""
    spec = resolve_method(MethodChoice(preset="grpo"))
    one_step = {w.name for m in HEALTHY for w in detect_failures(m, spec)}
    assert "mostly_zero_variance_groups" in one_step
    assert replay(HEALTHY) == [[] for _ in HEALTHY]


def test_mismatch_without_correction_warns_on_the_same_run() -> None:
    """The healthy run's bf16 + pipelined KL (~0.002) is real: a preset without a correction is told so."""
    uncorrected = [m | {"trajectory/mismatch_weight_mean": 1.0} for m in HEALTHY]  # what "none" reports
    warned = replay(uncorrected, "dr_grpo")
    assert all("stale_or_mismatched_samples_clipping_inactive" in names for names in warned)


def test_zero_variance_groups_are_judged_over_the_long_window() -> None:
    name = "mostly_zero_variance_groups"
    failing, healthy = (
        {"reward/zero_variance_group_fraction": 0.75},
        {"reward/zero_variance_group_fraction": 0.25},
    )
    warned = replay(steady(failing, LONG_WINDOW_STEPS))
    assert [name in names for names in warned] == [False] * (LONG_WINDOW_STEPS - 1) + [True]
    mixed = steady(healthy, LONG_WINDOW_STEPS - 4) + steady(failing, 4)  # 4 bad steps of 10: 45 %
    assert len(mixed) == LONG_WINDOW_STEPS and all(name not in names for names in replay(mixed))
    longer = mixed + steady(failing, 2)  # the last 10 steps: 6 bad, 55 %
    assert [name in names for names in replay(longer)][LONG_WINDOW_STEPS:] == [False, True]


@pytest.mark.parametrize(
    ("name", "failing", "healthy"),
    [
        ("entropy_collapse", {"trajectory/entropy": 0.01}, {"trajectory/entropy": 1.5}),
        (  # the one step a 30-step demo run showed: 2 of 4 groups near-uniform, amplified 157x
            "std_normalization_amplifies_noise",
            {"reward/near_uniform_group_fraction": 0.5, "reward/std_amplification_max": 157.0},
            {"reward/near_uniform_group_fraction": 0.0, "reward/std_amplification_max": 20.0},
        ),
    ],
)
def test_trend_detectors_need_a_full_window(
    name: str, failing: dict[str, float], healthy: dict[str, float]
) -> None:
    warned = replay(steady(failing, WINDOW_STEPS))
    assert [name in names for names in warned] == [False] * (WINDOW_STEPS - 1) + [True]
    one_bad_step = steady(healthy, WINDOW_STEPS - 1) + [failing]
    assert all(name not in names for names in replay(one_bad_step))


def test_length_bias_fires_on_sustained_growth_with_longer_wrong_answers() -> None:
    growing = [  # a token a step: the last 5 steps average 5 tokens more than the 5 before
        {
            "reward/negative_advantage_length_mean": 30.0 + i,
            "reward/positive_advantage_length_mean": 12.0,
            "trajectory/response_length_mean": 20.0 + i,
        }
        for i in range(2 * WINDOW_STEPS)
    ]
    warned = replay(growing)
    assert "length_normalized_negative_advantages_grow" in warned[-1]
    assert all("length_normalized_negative_advantages_grow" not in names for names in warned[:-1])
    assert "length_normalized_negative_advantages_grow" not in replay(growing, "dapo")[-1]  # token mean
    noisy = [m | {"trajectory/response_length_mean": 20.0 + (i % 3) * 5} for i, m in enumerate(growing)]
    assert all("length_normalized_negative_advantages_grow" not in names for names in replay(noisy))


def test_window_state_survives_a_restart() -> None:
    first = DiagnosticWindow()
    for metrics in steady({"reward/zero_variance_group_fraction": 1.0}, WINDOW_STEPS - 1):
        first.observe(metrics)
    resumed = DiagnosticWindow()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    observed = resumed.observe({"reward/zero_variance_group_fraction": 1.0})
    assert observed["diagnostics/window_steps"] == WINDOW_STEPS
    assert observed["reward/zero_variance_group_fraction/window"] == 1.0


def warned_on_each_update(name: str, reward: Callable[[int], float], steps: int = WINDOW_STEPS) -> list[bool]:
    """Whether ``name`` warns after each of ``steps`` real updates on the tiny model, where trajectory
    rewards come from ``reward(group index)``, drawn afresh each step."""
    from support.algorithms import build_lora_model, make_groups

    from policyopt.workers.train.update import PolicyUpdater

    spec = resolve_method(MethodChoice(preset="grpo"))
    update = PolicyUpdater(build_lora_model(), spec, learning_rate=1e-3, pad_token_id=0)
    seen = []
    for _ in range(steps):
        groups = [
            dataclasses.replace(
                g, trajectories=[dataclasses.replace(t, reward=reward(i)) for t in g.trajectories]
            )
            for i, g in enumerate(make_groups())
        ]
        update.step(groups)
        seen.append(name in [w.name for w in update.last_warnings])
    return seen


def test_an_update_on_groups_without_reward_variance_warns_after_a_window() -> None:
    seen = warned_on_each_update("mostly_zero_variance_groups", lambda group: 1.0, LONG_WINDOW_STEPS)
    assert seen == [False] * (LONG_WINDOW_STEPS - 1) + [True]


def test_an_update_on_groups_with_near_uniform_rewards_warns_after_a_window() -> None:
    """Groups that differ from each other but whose members differ by a thousandth: std scaling turns that
    noise into full-size advantages, step after step."""
    import torch

    noise = torch.Generator().manual_seed(0)
    seen = warned_on_each_update(
        "std_normalization_amplifies_noise",
        lambda group: 0.5 * group + 1e-3 * float(torch.rand((), generator=noise)),
    )
    assert seen == [False] * (WINDOW_STEPS - 1) + [True]
