"""Step metrics on both axes, and detectors of compound failures that name the axis and the fix.

Metric keys read ``reward/...`` (reward side) and ``trajectory/...`` (trajectory side). Detectors are
registered like the choices are; each reads the step's metrics (and the spec) and returns a message when its
failure signature is present.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from policyopt.workers.algorithms.diagnostics_window import (
    LENGTH_GROWTH_WINDOW_KEY,
    WINDOW_STEPS_KEY,
    long_windowed,
    window_full,
    windowed,
)
from policyopt.workers.algorithms.registry import AGGREGATIONS
from policyopt.workers.algorithms.reward_side.common import Metrics, group_std
from policyopt.workers.algorithms.spec import MethodSpec


@dataclass(frozen=True)
class DiagnosticWarning:
    """A failure signature seen in a step: its name, the axis to change, what was seen and what to do."""

    name: str
    axis: str
    message: str
    suggestion: str

    def __str__(self) -> str:
        return f"{self.name} ({self.axis}): {self.message}; suggestion: {self.suggestion}"


def reward_metrics(raw_scores_B: Tensor, group_index_B: Tensor, num_groups: int) -> Metrics:
    """reward/mean, std, zero-variance and near-uniform group fractions, on the RAW scores."""
    scores_B = raw_scores_B.double()
    batch_std = float(scores_B.std()) if scores_B.numel() > 1 else 0.0
    std_P = group_std(scores_B, group_index_B, num_groups)
    near_uniform_P = (std_P > 0) & (std_P <= 0.1 * batch_std)
    return {
        "reward/mean": float(scores_B.mean()),
        "reward/std": batch_std,
        "reward/group_std_mean": float(std_P.mean()),
        "reward/zero_variance_group_fraction": float((std_P == 0).double().mean()),
        "reward/near_uniform_group_fraction": float(near_uniform_P.double().mean()),
    }


def length_metrics(lengths_B: Tensor, sequence_advantages_B: Tensor) -> Metrics:
    """trajectory/response_length_* and the mean length of positive- and negative-advantage responses."""
    lengths_B = lengths_B.double()
    metrics = {
        "trajectory/response_length_mean": float(lengths_B.mean()),
        "trajectory/response_length_max": float(lengths_B.max()),
        "trajectory/response_length_min": float(lengths_B.min()),
    }
    for sign, selected_B in (
        ("positive", sequence_advantages_B > 0),
        ("negative", sequence_advantages_B < 0),
    ):
        if selected_B.any():
            metrics[f"reward/{sign}_advantage_length_mean"] = float(lengths_B[selected_B].mean())
    return metrics


class TokenMetricAccumulator:
    """Token-weighted means of per-token metric tensors over a whole step (names ending _max/_min reduce so)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}

    def add(self, metrics: dict[str, Tensor], mask_B_T: Tensor) -> None:
        selected_B_T = mask_B_T > 0
        if not selected_B_T.any():
            return
        for name, values_B_T in metrics.items():
            values_N = values_B_T.detach().float().expand_as(mask_B_T)[selected_B_T]
            if name.endswith("_max"):
                self._sums[name] = max(self._sums.get(name, float("-inf")), float(values_N.max()))
            elif name.endswith("_min"):
                self._sums[name] = min(self._sums.get(name, float("inf")), float(values_N.min()))
            else:
                self._sums[name] = self._sums.get(name, 0.0) + float(values_N.sum())
                self._counts[name] = self._counts.get(name, 0.0) + float(values_N.numel())

    @classmethod
    def merged(cls, parts: Sequence[TokenMetricAccumulator]) -> TokenMetricAccumulator:
        """One accumulator over the tokens of all ``parts`` (each data-parallel rank's shard)."""
        whole = cls()
        for part in parts:
            for name, total in part._sums.items():
                if name in part._counts:
                    whole._sums[name] = whole._sums.get(name, 0.0) + total
                    whole._counts[name] = whole._counts.get(name, 0.0) + part._counts[name]
                elif name.endswith("_max"):
                    whole._sums[name] = max(whole._sums.get(name, float("-inf")), total)
                else:
                    whole._sums[name] = min(whole._sums.get(name, float("inf")), total)
        return whole

    def result(self) -> Metrics:
        return {
            name: total / self._counts[name] if name in self._counts else total
            for name, total in self._sums.items()
        }


Detector = Callable[[Metrics, MethodSpec], str | None]


@dataclass(frozen=True)
class _DetectorEntry:
    name: str
    axis: str
    suggestion: str
    detect: Detector


DETECTORS: list[_DetectorEntry] = []


def register_detector(name: str, *, axis: str, suggestion: str) -> Callable[[Detector], Detector]:
    def decorate(fn: Detector) -> Detector:
        DETECTORS.append(_DetectorEntry(name, axis, suggestion, fn))
        return fn

    return decorate


def detect_failures(metrics: Metrics, spec: MethodSpec) -> list[DiagnosticWarning]:
    """Every registered failure signature present in this step's metrics."""
    warnings = []
    for detector in DETECTORS:
        message = detector.detect(metrics, spec)
        if message:
            warnings.append(DiagnosticWarning(detector.name, detector.axis, message, detector.suggestion))
    return warnings


LENGTH_BIAS_RATIO = 1.1
"""Negative-advantage responses must be this many times longer than positive ones to count as a bias."""
LENGTH_GROWTH_TOKENS = 1.0
"""Mean response length must grow by at least this many tokens in a step to count as growing (one step's
metrics, without a window)."""
LENGTH_WINDOW_GROWTH_TOKENS = 3.0
"""With a window: the mean response length of the last ``WINDOW_STEPS`` steps must exceed that of the
``WINDOW_STEPS`` before by this many tokens (healthy runs measured at most 1.7)."""


@register_detector(
    "length_normalized_negative_advantages_grow",
    axis="trajectory_side",
    suggestion="set trajectory_side.aggregation to 'token_mean' (DAPO) or 'seq_mean_token_sum_norm' (Dr.GRPO)",
)
def detect_length_bias(metrics: Metrics, spec: MethodSpec) -> str | None:
    """Per-sequence length normalization divides a wrong answer's penalty by its length, so long wrong answers
    are cheap and responses grow (Liu et al. 2025, Dr.GRPO)."""
    if "length_normalized" not in AGGREGATIONS.get(spec.trajectory_side.aggregation.name).attributes:
        return None
    if not window_full(metrics):
        return None
    negative = windowed(metrics, "reward/negative_advantage_length_mean", 0.0)
    positive = windowed(metrics, "reward/positive_advantage_length_mean", float("inf"))
    if WINDOW_STEPS_KEY in metrics:
        growth, needed = metrics.get(LENGTH_GROWTH_WINDOW_KEY, 0.0), LENGTH_WINDOW_GROWTH_TOKENS
    else:
        growth, needed = metrics.get("trajectory/response_length_growth", 0.0), LENGTH_GROWTH_TOKENS
    # Margins keep sampling noise (a few tokens either way) from reading as a trend.
    if negative > LENGTH_BIAS_RATIO * positive and growth >= needed:
        return (
            f"length-normalized aggregation while negative-advantage responses are longer ({negative:.1f} vs "
            f"{positive:.1f} tokens) and responses grow (+{growth:.1f} tokens)"
        )
    return None


STD_AMPLIFICATION = 10.0
"""Mean over the window of the step's largest 1 / (group std + eps) above which std scaling amplifies."""
NEAR_UNIFORM_FRACTION = 0.25
"""Mean over the window of the fraction of near-uniform groups (std > 0 but at most a tenth of the batch's)
above which the amplified noise is a pattern: the recorded healthy runs and the demo's 60 steps stay at or
below 0.05, and one step at 0.5 (seen once in a 30-step demo run) alone makes 0.1."""


@register_detector(
    "std_normalization_amplifies_noise",
    axis="reward_side",
    suggestion="set reward_side.estimator.scale to 'none' (Dr.GRPO) or 'batch_std', or raise estimator.eps",
)
def detect_std_amplification(metrics: Metrics, spec: MethodSpec) -> str | None:
    """Dividing by a near-zero group std turns tiny reward differences into full-size advantages.

    Judged over the window: with 4 groups a step, one step's near-uniform fraction moves in quarters, and
    healthy runs show a single step at 25-50% (the demo's partial credit can differ by one character's
    worth between two replies); a reward whose groups are persistently near-uniform keeps the window high.
    """
    if not window_full(metrics):
        return None
    amplification = windowed(metrics, "reward/std_amplification_max", 0.0)
    near_uniform = windowed(metrics, "reward/near_uniform_group_fraction", 0.0)
    if amplification > STD_AMPLIFICATION and near_uniform > NEAR_UNIFORM_FRACTION:
        return (
            f"{near_uniform:.0%} of groups are near-uniform and std scaling amplifies them {amplification:.0f}x "
            "(means over the last steps)"
        )
    return None


MISMATCH_KL = 1e-3
"""Sampler/trainer KL (mean over the window) above which uncorrected samples count as off-policy: on-policy
fp32, or bf16 with eager attention, measures 0; a version of staleness 0.001-0.005."""


@register_detector(
    "stale_or_mismatched_samples_clipping_inactive",
    axis="trajectory_side",
    suggestion="set trajectory_side.mismatch_correction to 'token_tis' (or 'sequence_mask'), or lower max_staleness",
)
def detect_inactive_clipping(metrics: Metrics, spec: MethodSpec) -> str | None:
    """The ratio is taken against the trainer's own log-probs, so it starts at 1 and clipping never fires,
    while the samples actually came from a different (stale or mismatched) sampler distribution."""
    mismatch = windowed(metrics, "trajectory/mismatch_kl", 0.0)
    clipped = metrics.get("trajectory/clip_fraction_low", 0.0) + metrics.get(
        "trajectory/clip_fraction_high", 0.0
    )
    corrected = spec.trajectory_side.mismatch_correction.name != "none" or (
        abs(metrics.get("trajectory/mismatch_weight_mean", 1.0) - 1.0) > 1e-6
    )
    if mismatch > MISMATCH_KL and clipped < 1e-3 and not corrected:
        return f"sampler/trainer KL {mismatch:.2g} with clipping inactive ({clipped:.1%}) and no correction"
    return None


ZERO_VARIANCE_FRACTION = 0.5
"""Fraction of zero-variance groups (mean over the last ``LONG_WINDOW_STEPS`` steps) above which a run is
mostly without signal."""


@register_detector(
    "mostly_zero_variance_groups",
    axis="reward_side",
    suggestion="set reward_side.group_filter to 'zero_variance' (DAPO dynamic sampling), raise group_size, "
    "or change prompt difficulty",
)
def detect_zero_variance(metrics: Metrics, spec: MethodSpec) -> str | None:
    """Groups whose members all scored the same carry no group-relative signal."""
    fraction = long_windowed(metrics, "reward/zero_variance_group_fraction")
    if fraction is not None and fraction > ZERO_VARIANCE_FRACTION:
        return f"{fraction:.0%} of groups have zero reward variance (no learning signal)"
    return None


ENTROPY_COLLAPSE_NATS = 0.05
"""Mean token entropy (over the window) below which sampling is near-deterministic."""


@register_detector(
    "entropy_collapse",
    axis="trajectory_side",
    suggestion="raise trajectory_side.objective.eps_high (clip-higher, 0.28) or trajectory_side.entropy_coef",
)
def detect_entropy_collapse(metrics: Metrics, spec: MethodSpec) -> str | None:
    """Near-deterministic sampling stops exploration; groups then turn uniform."""
    entropy = windowed(metrics, "trajectory/entropy", float("inf"))
    if window_full(metrics) and entropy < ENTROPY_COLLAPSE_NATS:
        return f"mean token entropy {entropy:.3f} nats"
    return None
