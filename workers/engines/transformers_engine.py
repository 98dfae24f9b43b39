"""Rollouts with transformers ``generate``: the embedded default, on CPU or one GPU.

The base model is loaded once. Each adapter version is a PEFT directory loaded into the same base
under its stable name (``run@vN``), and each batch selects its run's adapter. The cache is per run: a run
keeps its ``versions_per_run`` newest versions (rollouts sample with the newest; the one before may still
be asked for while a new version is published), and all runs together keep at most
``max_loaded_adapters``, the least recently used going first. Many runs on one base model thus stay
loaded instead of reloading their adapter on every batch.

Per-token log-probs come from a logits processor placed after temperature / top-k / top-p, so they are
the processed log-probs of the distribution actually sampled from (see ``engines.base``). It holds one
``[rows, vocab]`` tensor at a time instead of the ``[steps, rows, vocab]`` that ``output_scores`` keeps.
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
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
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


class _LogprobRecorder(LogitsProcessor):
    """Last processor in the chain: records log p(sampled token) under the processed distribution.

    At step t it keeps ``log_softmax(scores_t)``; at step t+1 ``input_ids`` ends with the token drawn at
    step t, so its log-prob is gathered then. ``finish`` gathers the last step's token.
    """

    def __init__(self) -> None:
        self._pending_logp_B_V: torch.Tensor | None = None
        self._token_logps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._gather(input_ids[:, -1])
        self._pending_logp_B_V = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather(self, tokens_B: torch.Tensor) -> None:
        if self._pending_logp_B_V is not None:
            self._token_logps.append(self._pending_logp_B_V.gather(1, tokens_B[:, None]).squeeze(1))
            self._pending_logp_B_V = None

    def finish(self, sequences_B_L: torch.Tensor) -> torch.Tensor:
        """Log-probs ``[B, T]`` of the T generated tokens."""
        self._gather(sequences_B_L[:, -1])
        if not self._token_logps:
            return torch.zeros(sequences_B_L.shape[0], 0)
        return torch.stack(self._token_logps, dim=1).cpu()


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
        # A clean generation config: no checkpoint defaults (top_k=50, repetition penalty...) may reshape
        # the sampling distribution behind the log-probs we record.
        self._base.generation_config = GenerationConfig(
            bos_token_id=self._base.config.bos_token_id, eos_token_id=self._eos_ids, pad_token_id=self._pad_id
        )

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
        """Rows ``i * n + j``: sample j of prompt i, prompts left-padded into one batch."""
        input_ids_B_L, attention_mask_B_L = self._left_pad(prompt_ids_list)
        recorder = _LogprobRecorder()
        config = GenerationConfig(
            do_sample=do_sample, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            num_return_sequences=n, eos_token_id=self._eos_ids, pad_token_id=self._pad_id,
        )  # fmt: skip
        model = self._select_adapter(adapter)
        with torch.inference_mode(), self._adapter_disabled(adapter is None):
            sequences_B_S: torch.Tensor = model.generate(  # type: ignore[operator]
                input_ids=input_ids_B_L,
                attention_mask=attention_mask_B_L,
                generation_config=config,
                logits_processor=LogitsProcessorList([*warpers, recorder]),
            )
        completion_ids_B_T = sequences_B_S[:, input_ids_B_L.shape[1] :].cpu()
        logp_B_T = recorder.finish(sequences_B_S)
        return [
            self._to_sample(completion_ids_B_T[b], logp_B_T[b]) for b in range(completion_ids_B_T.shape[0])
        ]

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
