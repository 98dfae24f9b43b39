"""Rollouts with transformers models and our own decode loop: the embedded default, on CPU or one GPU.

The base model is loaded once. Each adapter version is a PEFT directory loaded into the same base
under its stable name (``run@vN``), and each batch selects its run's adapter. The cache is per run: a run
keeps its ``versions_per_run`` newest versions (rollouts sample with the newest; the one before may still
be asked for while a new version is published), and all runs together keep at most
``max_loaded_adapters``, the least recently used going first. Many runs on one base model thus stay
loaded instead of reloading their adapter on every batch.

Per-token log-probs are taken after temperature / top-k / top-p (transformers' warpers, in vLLM's
order), so they are the processed log-probs of the distribution actually sampled from (see
``engines.base``); one ``[rows, vocab]`` tensor is held at a time.

Why not ``generate``: measured on SmolLM2-135M in bf16, one thread, 4 prompts x 4 samples, 48 new tokens
(``bench/rl_step.py``'s batch), ``generate`` took 4.7 s, of which
- 1.2 s was the prefill's LM head: ``generate`` hands it a ``[rows, 1, hidden]`` slice of the prefill's
  hidden states, which is not contiguous, so torch runs it as a batched matmul against the vocab-sized
  weight expanded and copied once per row (a 16 x 576 x 49152 copy);
- 0.6 s was ``torch.multinomial`` (12 ms a step for 16 x 49k probabilities; an inverse-CDF draw, cumsum
  then searchsorted, takes 0.65 ms and draws from the same distribution);
- the prefill ran every prompt ``n`` times, and finished rows kept decoding to the longest row's end.
The loop below prefills each prompt once and repeats its KV cache, feeds the LM head a contiguous
``[rows, hidden]`` matrix, draws by inverse CDF, and drops finished rows from the batch and the cache.
Logits are the LM head applied to the decoder's last hidden state, as the trainer's ``PolicyForward``
computes them, so sampler and trainer score a token the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    DynamicCache,
    LogitsProcessor,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from policyopt.core.errors import FailedPrecondition
from policyopt.models import context_length, encode_user_prompt
from policyopt.workers.engines.base import FINISH_LENGTH, FINISH_STOP, AdapterRef, Sample, SamplingParams
from policyopt.workers.placement import load_model, resolve_placement

log = logging.getLogger(__name__)

MAX_LOADED_ADAPTERS = 64
"""Adapters kept loaded over all runs; LoRA weights of small ranks are a few MB each."""
VERSIONS_PER_RUN = 2
"""Versions of one run kept loaded: the newest and the one before."""


_NO_INPUT_IDS = torch.empty(0, dtype=torch.long)
"""transformers' warpers take the ids so far; temperature, top-k and top-p never read them."""


def _draw(logp_A_V: torch.Tensor) -> torch.Tensor:
    """One token per row from ``exp(logp)`` by inverse CDF: the first index whose cumulative probability
    exceeds a uniform draw (``right=True`` never lands on a zero-probability token)."""
    cdf_A_V = logp_A_V.exp().cumsum(dim=-1)
    u_A_1 = torch.rand((cdf_A_V.shape[0], 1), device=cdf_A_V.device) * cdf_A_V[:, -1:]
    return torch.searchsorted(cdf_A_V, u_A_1, right=True).squeeze(1).clamp_(max=cdf_A_V.shape[1] - 1)


def _warpers(params: SamplingParams) -> list[LogitsProcessor]:
    """The sampler's processing, in vLLM's order: temperature, then top-k, then top-p."""
    warpers: list[LogitsProcessor] = []
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=params.top_p))
    return warpers


class TransformersEngine:
    """``RolloutEngine`` on transformers ``generate``; one instance per base model, not thread-safe."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_rows: int = 64,
        max_loaded_adapters: int = MAX_LOADED_ADAPTERS,
        versions_per_run: int = VERSIONS_PER_RUN,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._base, self.tokenizer = load_model(model_dir, resolve_placement(device, dtype))
        self._peft: PeftModel | None = None  # wraps the base (in place) once an adapter is loaded
        self._context_length = context_length(model_dir)
        self.max_batch_rows = max_batch_rows
        self.max_loaded_adapters = max(1, max_loaded_adapters)
        self.versions_per_run = max(1, versions_per_run)
        self._adapters: OrderedDict[str, AdapterRef] = OrderedDict()  # loaded, least recently used first
        self._eos_ids = self._stop_token_ids()
        self._pad_id = int(self.tokenizer.pad_token_id)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def device(self) -> torch.device:
        return self._base.device

    def _stop_token_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self._base.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(int(i) for i in source)
        if not ids:
            raise FailedPrecondition(
                f"model {self.model_dir} defines no EOS token; set eos_token_id in its config"
            )
        return sorted(ids)

    def encode_chat(self, prompt: str) -> list[int]:
        return encode_user_prompt(self.tokenizer, prompt)

    def sample(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[Sample]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_chunk = max(1, self.max_batch_rows // n)
        samples: list[list[Sample]] = []
        for start in range(0, len(prompt_ids_list), per_chunk):
            chunk = prompt_ids_list[start : start + per_chunk]
            rows = self._generate(chunk, n, params.max_new_tokens, _warpers(params), True, adapter)
            samples.extend(rows[i * n : (i + 1) * n] for i in range(len(chunk)))
        return samples

    def greedy(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        max_new_tokens: int,
        adapter: AdapterRef | None = None,
    ) -> list[Sample]:
        samples: list[Sample] = []
        for start in range(0, len(prompt_ids_list), self.max_batch_rows):
            chunk = prompt_ids_list[start : start + self.max_batch_rows]
            samples.extend(self._generate(chunk, 1, max_new_tokens, [], False, adapter))
        return samples

    def close(self) -> None:
        self._adapters.clear()
        self._peft = None
        del self._base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- generation ------------------------------------------------------------------------------------
    def _generate(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int,
        warpers: list[LogitsProcessor],
        do_sample: bool,
        adapter: AdapterRef | None,
    ) -> list[Sample]:
        """Rows ``i * n + j``: sample j of prompt i, prompts left-padded into one batch.

        The decode loop runs the model's decoder and LM head directly (see the module docstring for why
        not ``generate``): each prompt is prefilled once and its KV cache repeated ``n`` times, the LM head
        sees one ``[rows, hidden]`` matrix a step, tokens are drawn by inverse CDF, and finished rows leave
        the batch and the cache.
        """
        input_ids_P_L, mask_P_L = self._left_pad(prompt_ids_list)
        rows = input_ids_P_L.shape[0] * n
        ids_R_T = torch.full((rows, max_new_tokens), self._pad_id, dtype=torch.long)
        logp_R_T = torch.zeros((rows, max_new_tokens))
        self._select_adapter(adapter)  # activates the adapter on the LoRA layers injected into the base
        decoder, head = self._base.get_decoder(), self._base.get_output_embeddings()
        eos_E = torch.tensor(self._eos_ids, device=self.device)
        with torch.inference_mode(), self._adapter_disabled(adapter is None):
            cache = DynamicCache(config=self._base.config)
            positions_P_L = (mask_P_L.cumsum(-1) - 1).clamp(min=0)
            hidden_P_H = decoder(
                input_ids=input_ids_P_L, attention_mask=mask_P_L, position_ids=positions_P_L,
                past_key_values=cache, use_cache=True,
            ).last_hidden_state[:, -1].contiguous()  # fmt: skip
            cache.batch_repeat_interleave(n)
            hidden_A_H = hidden_P_H.repeat_interleave(n, dim=0)
            mask_A_S = mask_P_L.repeat_interleave(n, dim=0)
            next_position_A = positions_P_L[:, -1].repeat_interleave(n) + 1
            active_A = torch.arange(rows)  # the original row of each row still decoding
            for t in range(max_new_tokens):
                scores_A_V = head(hidden_A_H).float()
                for warper in warpers:
                    scores_A_V = warper(_NO_INPUT_IDS, scores_A_V)
                logp_A_V = torch.log_softmax(scores_A_V, dim=-1)
                token_A = _draw(logp_A_V) if do_sample else scores_A_V.argmax(dim=-1)
                ids_R_T[active_A, t] = token_A.cpu()
                logp_R_T[active_A, t] = logp_A_V.gather(1, token_A[:, None]).squeeze(1).cpu()
                going_A = ~torch.isin(token_A, eos_E)
                if t == max_new_tokens - 1 or not bool(going_A.any()):
                    break
                if not bool(going_A.all()):
                    keep_A = going_A.nonzero().squeeze(1)
                    cache.batch_select_indices(keep_A)
                    active_A, token_A = active_A[keep_A.cpu()], token_A[keep_A]
                    mask_A_S, next_position_A = mask_A_S[keep_A], next_position_A[keep_A]
                mask_A_S = torch.cat([mask_A_S, mask_A_S.new_ones((mask_A_S.shape[0], 1))], dim=1)
                hidden_A_H = decoder(
                    input_ids=token_A[:, None], attention_mask=mask_A_S, position_ids=next_position_A[:, None],
                    past_key_values=cache, use_cache=True,
                ).last_hidden_state[:, -1].contiguous()  # fmt: skip
                next_position_A = next_position_A + 1
        return [self._to_sample(ids_R_T[r], logp_R_T[r]) for r in range(rows)]

    def _left_pad(self, prompt_ids_list: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompt_ids_list)
        if width == 0:
            raise ValueError("every prompt needs at least one token")
        ids_B_L = torch.full((len(prompt_ids_list), width), self._pad_id, dtype=torch.long)
        mask_B_L = torch.zeros((len(prompt_ids_list), width), dtype=torch.long)
        for b, ids in enumerate(prompt_ids_list):
            if ids:
                ids_B_L[b, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
                mask_B_L[b, width - len(ids) :] = 1
        return ids_B_L.to(self.device), mask_B_L.to(self.device)

    def _to_sample(self, ids_T: torch.Tensor, logp_T: torch.Tensor) -> Sample:
        """Cut at the first EOS (kept) and drop the padding generate writes after it."""
        ids = ids_T.tolist()
        finish = FINISH_LENGTH
        for t, token in enumerate(ids):
            if token in self._eos_ids:
                ids, finish = ids[: t + 1], FINISH_STOP
                break
        text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        return Sample(
            completion_ids=ids, sampler_logprobs=logp_T[: len(ids)].tolist(), text=text, finish_reason=finish
        )

    # -- adapters --------------------------------------------------------------------------------------
    def _select_adapter(self, adapter: AdapterRef | None) -> PreTrainedModel | PeftModel:
        if adapter is None:
            return self._peft if self._peft is not None else self._base
        peft = self._peft if adapter.name in self._adapters else self._load_adapter(adapter)
        assert peft is not None
        self._adapters.move_to_end(adapter.name)
        peft.set_adapter(adapter.name)
        return peft

    def _load_adapter(self, adapter: AdapterRef) -> PeftModel:
        if not (adapter.path / "adapter_config.json").exists():
            raise FailedPrecondition(
                f"adapter {adapter.name} is missing at {adapter.path}; the rollout worker must see the same "
                "adapter store as the trainer (POLICYOPT_ADAPTER_STORE / POLICYOPT_DATA_DIR)"
            )
        log.info("loading adapter %s from %s", adapter.name, adapter.path)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self._base, str(adapter.path), adapter_name=adapter.name, is_trainable=False
            )
        else:
            self._peft.load_adapter(str(adapter.path), adapter_name=adapter.name, is_trainable=False)
        self._peft.eval()
        self._peft.set_adapter(adapter.name)  # before evicting, so no deleted adapter is ever active
        self._adapters[adapter.name] = adapter
        self._evict(self._peft, keep=adapter)
        return self._peft

    @property
    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        return list(self._adapters)

    def _evict(self, peft: PeftModel, keep: AdapterRef) -> None:
        """Drop versions of ``keep``'s run beyond its newest ``versions_per_run``, then the least recently
        used adapters beyond ``max_loaded_adapters``; ``keep`` stays."""
        same_run = sorted(
            (ref for ref in self._adapters.values() if ref.run_id == keep.run_id),
            key=lambda ref: ref.version,
            reverse=True,
        )
        stale = [ref.name for ref in same_run[self.versions_per_run :] if ref.name != keep.name]
        while len(self._adapters) - len(stale) > self.max_loaded_adapters:
            oldest = next(name for name in self._adapters if name != keep.name and name not in stale)
            stale.append(oldest)
        for name in stale:
            peft.delete_adapter(name)
            del self._adapters[name]

    def _adapter_disabled(self, disabled: bool) -> contextlib.AbstractContextManager[object]:
        """Sampling from the base model while LoRA layers are injected means bypassing them."""
        if disabled and self._peft is not None:
            return self._peft.disable_adapter()
        return contextlib.nullcontext()
