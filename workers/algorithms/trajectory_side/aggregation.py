"""Loss aggregations: per-token losses (B x T) to one scalar, exact under gradient accumulation.

Each function sees one micro-batch but divides by totals of the whole optimizer step (``StepTotals``), so
summing the micro-batch results equals aggregating the whole step at once, however the rows are split.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from policyopt.workers.algorithms.params import Params, param
from policyopt.workers.algorithms.registry import AGGREGATIONS


@dataclass(frozen=True)
class StepTotals:
    """Counts over the whole optimizer step: trained tokens, sequences, and the normalizer length."""

    tokens: int
    sequences: int
    max_completion_length: int


@AGGREGATIONS.register(
    "token_mean",
    rationale="Every token weighs the same: no length bias (DAPO). The default for long reasoning.",
)
def aggregate_token_mean(loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals, params: Params) -> Tensor:
    """sum_i sum_t l_it / sum_i |y_i|. Yu et al. 2025, arXiv:2503.14476."""
    return (loss_B_T * mask_B_T).sum() / max(totals.tokens, 1)


@AGGREGATIONS.register(
    "seq_mean_token_mean",
    attributes=("length_normalized",),
    rationale="GRPO's original: mean over tokens, then sequences; long wrong answers are penalized less.",
)
def aggregate_seq_mean_token_mean(
    loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals, params: Params
) -> Tensor:
    """(1/G) sum_i (1/|y_i|) sum_t l_it. Shao et al. 2024, arXiv:2402.03300."""
    per_sequence_B = (loss_B_T * mask_B_T).sum(-1) / mask_B_T.sum(-1).clamp(min=1.0)
    return per_sequence_B.sum() / max(totals.sequences, 1)


@AGGREGATIONS.register(
    "seq_mean_token_sum",
    rationale="Sum over a sequence's tokens, mean over sequences: the REINFORCE estimator of grad log p(y).",
)
def aggregate_seq_mean_token_sum(
    loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals, params: Params
) -> Tensor:
    """(1/G) sum_i sum_t l_it."""
    return (loss_B_T * mask_B_T).sum() / max(totals.sequences, 1)


@dataclass(frozen=True)
class TokenSumNormParams(Params):
    normalizer: int = param(
        0, "Constant token count dividing each sequence's sum; 0 uses the run's max_new_tokens (Dr.GRPO)."
    )

    def validate(self) -> list[str]:
        return [] if self.normalizer >= 0 else ["normalizer must be >= 0 (0: the run's max_new_tokens)"]


@AGGREGATIONS.register(
    "seq_mean_token_sum_norm",
    params=TokenSumNormParams,
    rationale="Dr.GRPO: token sums divided by one constant, so neither length nor batch shape biases the gradient.",
)
def aggregate_seq_mean_token_sum_norm(
    loss_B_T: Tensor, mask_B_T: Tensor, totals: StepTotals, params: TokenSumNormParams
) -> Tensor:
    """(1/G) sum_i sum_t l_it / L, L a constant (max_new_tokens). Liu et al. 2025, arXiv:2503.20783."""
    normalizer = params.normalizer or totals.max_completion_length
    return (loss_B_T * mask_B_T).sum() / (max(totals.sequences, 1) * max(normalizer, 1))
