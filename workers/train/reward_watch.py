"""What a step's rewards say beyond their mean: component means, the reward-hacking signature, samples.

- ``component_means``: ``reward/component/<name>`` per named reward component (``Trajectory.reward_components``).
- ``RewardHackingWatch``: the total reward rises while the correctness component falls, over a window of
  recent steps. Per-step diagnostics (``workers/algorithms/diagnostics``) see one step; this needs history,
  so it lives beside the trainer and keeps a short window per run.
- ``sample_event``: a SAMPLE event with a few of the step's completions, bounded in count and length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from policyopt.core.types import CompletionSample, EventKind, RunEvent, TrajectoryGroup
from policyopt.workers.algorithms import DiagnosticWarning

COMPONENT_PREFIX = "reward/component/"
DEFAULT_CORRECTNESS = "correct"
"""The component watched when the run names none and the endpoint reports one by this name."""
HACKING_WINDOW_STEPS = 8
"""Steps compared: the mean of the newer half against the mean of the older half."""
HACKING_TOTAL_RISE = 0.1
"""The total reward's rise (newer half minus older half, in reward units) that counts as rising."""
HACKING_CORRECT_DROP = 0.1
"""The correctness component's fall that counts as falling. Both thresholds are calibrated for rewards in
[0, 1] with 16-64 completions a step: a binary component's step mean then varies by about 0.06-0.12 step to
step, so a half-window mean (4 steps) varies by 0.03-0.06 and 0.1 is about two of those apart."""
SAMPLES_PER_EVENT = 4
"""Completions a SAMPLE event keeps (the first trajectory of the step's first groups)."""
SAMPLE_TEXT_CHARS = 2000
"""Longest prompt or completion text a sample keeps (longer ones end with an ellipsis)."""


def component_means(groups: Sequence[TrajectoryGroup]) -> dict[str, float]:
    """Mean of each named reward component over the trajectories that report it."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for group in groups:
        for trajectory in group.trajectories:
            for name, value in trajectory.reward_components.items():
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
    return {f"{COMPONENT_PREFIX}{name}": sums[name] / counts[name] for name in sorted(sums)}


class RewardHackingWatch:
    """Keeps, per run, the last ``window`` steps' (total mean, correctness mean) and names the signature."""

    def __init__(
        self,
        window: int = HACKING_WINDOW_STEPS,
        total_rise: float = HACKING_TOTAL_RISE,
        correct_drop: float = HACKING_CORRECT_DROP,
    ) -> None:
        self.window, self.total_rise, self.correct_drop = window, total_rise, correct_drop
        self._history: dict[str, deque[tuple[float, float]]] = {}

    def observe(
        self, run_id: str, metrics: dict[str, float], correctness: str = ""
    ) -> DiagnosticWarning | None:
        """Record this step's metrics; the warning when the window shows the total up and correctness down."""
        name = correctness or DEFAULT_CORRECTNESS
        correct = metrics.get(f"{COMPONENT_PREFIX}{name}")
        total = metrics.get("reward/mean")
        if correct is None or total is None:
            return None
        history = self._history.setdefault(run_id, deque(maxlen=self.window))
        history.append((total, correct))
        if len(history) < self.window:
            return None
        half = self.window // 2
        older, newer = list(history)[:half], list(history)[-half:]
        total_change = _mean(t for t, _ in newer) - _mean(t for t, _ in older)
        correct_change = _mean(c for _, c in newer) - _mean(c for _, c in older)
        if total_change < self.total_rise or -correct_change < self.correct_drop:
            return None
        return DiagnosticWarning(
            name="reward_hacking",
            axis="reward",
            message=f"over the last {self.window} steps the total reward rose by {total_change:+.3f} while "
            f"the correctness component {name!r} changed by {correct_change:+.3f}",
            suggestion="read the run's SAMPLE events: the policy is likely exploiting another component "
            "(format, length, a judge); lower that component's weight or tighten its check",
        )

    def forget(self, run_id: str) -> None:
        self._history.pop(run_id, None)


def sample_event(run_id: str, version: int, groups: Sequence[TrajectoryGroup]) -> RunEvent:
    """A SAMPLE event with the first completion of up to ``SAMPLES_PER_EVENT`` groups of the step."""
    samples = [
        CompletionSample(
            prompt=_clip(group.prompt),
            completion=_clip(group.trajectories[0].text),
            reward=group.trajectories[0].total_reward,
            components=dict(group.trajectories[0].reward_components),
        )
        for group in groups[:SAMPLES_PER_EVENT]
        if group.trajectories
    ]
    return RunEvent(
        run_id=run_id,
        kind=EventKind.SAMPLE,
        step=version,
        version=version,
        message=f"{len(samples)} sampled completions of step {version}",
        samples=samples,
    )


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_TEXT_CHARS else text[: SAMPLE_TEXT_CHARS - 1] + "…"


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


__all__ = [
    "COMPONENT_PREFIX",
    "HACKING_CORRECT_DROP",
    "HACKING_TOTAL_RISE",
    "HACKING_WINDOW_STEPS",
    "RewardHackingWatch",
    "component_means",
    "sample_event",
]
