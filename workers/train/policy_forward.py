"""Forward passes of the policy that score completion tokens only.

The backbone runs over prompt + completion; the LM head runs only at the positions that predict trained
completion tokens, through ``selective_log_softmax`` (never full logits over the prompt or the padding).
The reference policy is the same peft model under ``disable_adapter()``: no second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from policyopt.workers.algorithms.logprobs import EntropyMode, selective_log_softmax
from policyopt.workers.train.step_batch import MicroBatch


@dataclass
class TokenOutputs:
    """Per-token results on a micro-batch's completion grid (b x T), zero off trained tokens.

    ``hidden_N_H`` holds the hidden states of the trained positions when asked for (for a value head).
    """

    logp_b_T: Tensor
    entropy_b_T: Tensor | None = None
    hidden_N_H: Tensor | None = None


def _scatter(values_N: Tensor, micro: MicroBatch) -> Tensor:
    grid = values_N.new_zeros(len(micro.rows) * micro.width)
    return grid.index_copy(0, micro.token_index_N, values_N).view(len(micro.rows), micro.width)


class PolicyForward:
    """Scores completion tokens of micro-batches with a (peft) causal LM at a sampling temperature."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        self.model = model
        get_base = getattr(model, "get_base_model", None)
        self.causal_lm: nn.Module = get_base() if callable(get_base) else model
        config = getattr(self.causal_lm, "config", None)
        for unsupported in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            if getattr(config, unsupported, None) not in (None, 1.0):
                raise ValueError(f"models with {unsupported} are not supported by the policy update yet")
        self.backbone: nn.Module = getattr(self.causal_lm, self.causal_lm.base_model_prefix)  # type: ignore[arg-type]
        head = self.causal_lm.get_output_embeddings()  # type: ignore[operator]
        if not isinstance(head, nn.Linear):
            raise ValueError(
                "the policy update needs a plain nn.Linear LM head (LoRA on lm_head is not supported)"
            )
        self.lm_head: nn.Linear = head
        self.temperature = temperature

    @property
    def hidden_size(self) -> int:
        return int(self.lm_head.weight.shape[1])

    def hidden_states(self, micro: MicroBatch) -> Tensor:
        """Last hidden states at the trained positions, N x H."""
        outputs = self.backbone(
            input_ids=micro.input_ids_b_L, attention_mask=micro.attention_mask_b_L, use_cache=False
        )
        hidden_b_L_H = outputs.last_hidden_state
        return hidden_b_L_H.reshape(-1, hidden_b_L_H.shape[-1]).index_select(0, micro.hidden_index_N)

    def score(
        self, micro: MicroBatch, *, entropy: EntropyMode = "none", keep_hidden: bool = False
    ) -> TokenOutputs:
        """Log-probs (and entropy) of the trained tokens under the current policy."""
        hidden_N_H = self.hidden_states(micro)
        logp_N, entropy_N = selective_log_softmax(
            hidden_N_H.to(self.lm_head.weight.dtype),  # fp32 activations: the head's matmul is bf16
            self.lm_head.weight,
            micro.targets_N,
            bias_V=self.lm_head.bias,
            temperature=self.temperature,
            entropy=entropy,
        )
        return TokenOutputs(
            logp_b_T=_scatter(logp_N, micro),
            entropy_b_T=_scatter(entropy_N, micro) if entropy_N is not None else None,
            hidden_N_H=hidden_N_H if keep_hidden else None,
        )

    @torch.no_grad()
    def score_reference(self, micro: MicroBatch) -> Tensor:
        """Log-probs under the base model: the same peft model with its adapter disabled."""
        disable_adapter = getattr(self.model, "disable_adapter", None)
        if disable_adapter is None:
            raise ValueError("KL to the reference needs a peft model (the reference is the adapter disabled)")
        with disable_adapter():
            return self.score(micro).logp_b_T

    def scatter(self, values_N: Tensor, micro: MicroBatch) -> Tensor:
        """Place per-trained-token values on the micro-batch's (b x T) grid."""
        return _scatter(values_N, micro)
