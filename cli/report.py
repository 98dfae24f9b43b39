"""Reward curves for the terminal (a sparkline) and for the run's output directory (a PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, scaled between the series' min and max."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((v - low) / span * (len(_BARS) - 1) + 0.5))] for v in values)


def plot_rewards(steps: Sequence[int], rewards: Sequence[float], path: Path, title: str) -> Path:
    """Write the mean-reward curve to ``path`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, rewards, marker="o", linewidth=1.5)
    if len(rewards) >= 4:
        window = max(2, len(rewards) // 5)
        smooth = [
            sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
            for i in range(len(rewards))
        ]
        ax.plot(steps, smooth, linewidth=2.5, alpha=0.6, label=f"moving mean ({window})")
        ax.legend()
    ax.set_xlabel("training step")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
