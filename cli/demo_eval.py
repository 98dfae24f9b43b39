"""The demo's held-out evaluation: the eval curve from EVAL and PROMOTION events, printed beside the reward.

The demo's run evaluates version 0 and every ``eval_every`` versions on the task's eval set (prompts the
training stream never draws), 4 samples each at the training temperature, and promotes a version whose
eval mean beats the best so far (``beats_best``). The eval of the last version may land after the run
completed; ``wait_for_last`` reads it from the version's manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from policyopt.cli.report import sparkline
from policyopt.client import EventKind, RunEvent, RunHandle

EVALS_PER_RUN = 5
"""Evaluations after the baseline: enough for a curve, few enough to cost little (8 prompts x 4 samples)."""


def eval_every(steps: int) -> int:
    """Versions between evaluations so that about ``EVALS_PER_RUN`` fall in ``steps`` steps, the last one included."""
    every = max(1, steps // EVALS_PER_RUN)
    while steps % every:
        every -= 1
    return every


@dataclass
class EvalCurve:
    """Eval means by version and the versions promoted, as the run reports them."""

    means: dict[int, float] = field(default_factory=dict)
    promoted: list[int] = field(default_factory=list)

    def observe(self, event: RunEvent) -> str | None:
        """Fold an EVAL or PROMOTION event in; returns a line to show, or None for other events."""
        if event.kind == EventKind.EVAL:
            self.means[event.version] = float(event.metrics.get("eval/mean", float("nan")))
            return f"[eval] version {event.version}: held-out mean reward {self.means[event.version]:.3f}"
        if event.kind == EventKind.PROMOTION:
            self.promoted.append(event.version)
            return f"[promotion] version {event.version} promoted"
        return None

    def wait_for_last(self, run_handle: RunHandle, version: int, timeout_s: float = 60.0) -> None:
        """Read the evaluation of ``version`` (and any before it) from the manifests, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while version not in self.means and time.monotonic() < deadline:
            for adapter in run_handle.list_adapters():
                if adapter.eval:
                    self.means[adapter.version] = adapter.eval.get("eval/mean", float("nan"))
                if adapter.promoted and adapter.version not in self.promoted:
                    self.promoted.append(adapter.version)
            if version not in self.means:
                time.sleep(1.0)

    def lines(self, rewards: list[float]) -> list[str]:
        """The eval curve beside the training reward: one row per evaluated version."""
        if not self.means:
            return []
        rows = ["version  train reward (its step)  held-out eval mean"]
        for version in sorted(self.means):
            train = f"{rewards[version - 1]:.3f}" if 0 < version <= len(rewards) else "  -  "
            mark = "  promoted" if version in self.promoted else ""
            rows.append(f"v{version:<7} {train:>22}  {self.means[version]:>18.3f}{mark}")
        curve = [self.means[v] for v in sorted(self.means)]
        rows.append(f"eval mean by version  {sparkline(curve)}")
        return rows


__all__ = ["EVALS_PER_RUN", "EvalCurve", "eval_every"]
