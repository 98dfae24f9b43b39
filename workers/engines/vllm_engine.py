"""Rollouts on vLLM servers over HTTP: token ids in, token ids and per-token log-probs out.

Each adapter version is sampled by its stable name ``RUN@vN`` (``AdapterRef.name``), loaded through
``/v1/load_lora_adapter`` on first use (see ``vllm_lora`` for why a reload is an unload plus a load).
Versions of a run older than the newest minus ``max_loaded_adapters - 1`` that this engine loaded are
unloaded, so set ``max_loaded_adapters = max_staleness + 1`` and start vLLM with ``--max-loras`` at
least that.

Log-probs: start vLLM with ``--logprobs-mode processed_logprobs`` so ``sampler_logprobs`` are those of
the distribution actually sampled from, after temperature, top-k and top-p (the convention in
``engines.base``; with the neutral defaults they equal raw log-probs). Greedy decoding reports raw
log-probs in either mode. Every request spells out the neutral penalties, so a checkpoint's
``generation_config.json`` (which vLLM applies as defaults) cannot reshape the distribution.

With several URLs, the prompts of one ``sample`` call are split across the servers, concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyopt.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from policyopt.models import context_length, encode_user_prompt
from policyopt.workers.engines.base import FINISH_LENGTH, FINISH_STOP, AdapterRef, Sample, SamplingParams
from policyopt.workers.engines.vllm_http import JSONObject, VLLMClient
from policyopt.workers.engines.vllm_lora import LoraSlots, parse_adapter_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_NEUTRAL = {"min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH}
_MAX_CONCURRENT_REQUESTS = 16


class VLLMEngine:
    """``RolloutEngine`` backed by one or more vLLM OpenAI-compatible servers serving ``model_dir``."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        urls: Sequence[str] | str,
        max_loaded_adapters: int = 2,
        timeout_s: float = 600.0,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise InvalidArgument(
                "the vllm engine needs at least one server URL: set POLICYOPT_VLLM_URL (comma-separated)"
            )
        if max_loaded_adapters < 1:
            raise InvalidArgument(f"max_loaded_adapters must be >= 1, got {max_loaded_adapters}")
        self.model_dir = Path(model_dir)
        self.max_loaded_adapters = max_loaded_adapters
        self._slots = [LoraSlots(VLLMClient(u, timeout_s=timeout_s)) for u in url_list]
        self._base_name: str | None = None
        self._context_length: int | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # -- model facts ------------------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [slot.client.base_url for slot in self._slots]

    @property
    def base_name(self) -> str:
        """The base model's served name, asked of the first server once."""
        if self._base_name is None:
            served = self._slots[0].client.base_model()
            if Path(served.root).resolve() != self.model_dir.resolve():
                log.warning(
                    "vLLM at %s serves %s but the run's base model is %s; the trainer's log-probs will only "
                    "match if they are the same weights",
                    self._slots[0].client.base_url, served.root, self.model_dir,
                )  # fmt: skip
            self._base_name = served.name
        return self._base_name

    @property
    def context_length(self) -> int:
        if self._context_length is None:
            served = self._slots[0].client.base_model().max_model_len
            local = context_length(self.model_dir)
            self._context_length = min(local, served) if served else local
        return self._context_length

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        return self._tokenizer

    def encode_chat(self, prompt: str) -> list[int]:
        return encode_user_prompt(self.tokenizer, prompt)

    # -- sampling ----------------------------------------------------------------------------------------
    def sample(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[Sample]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        body: JSONObject = {
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            **_NEUTRAL,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        rows = self._run(prompt_ids_list, params.max_new_tokens, body, adapter)
        return [rows[i * n : (i + 1) * n] for i in range(len(prompt_ids_list))]

    def greedy(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        max_new_tokens: int,
        adapter: AdapterRef | None = None,
    ) -> list[Sample]:
        body: JSONObject = {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, **_NEUTRAL}
        return self._run(prompt_ids_list, max_new_tokens, body, adapter)

    def close(self) -> None:
        """Forget what this engine loaded; the adapters stay on the servers for other clients."""
        for slot in self._slots:
            slot.forget()

    def _run(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        max_new_tokens: int,
        body: JSONObject,
        adapter: AdapterRef | None,
    ) -> list[Sample]:
        """Samples in prompt order (``n`` rows per prompt), the requests spread over the servers."""
        prompts = [[int(t) for t in ids] for ids in prompt_ids_list]
        if not prompts:
            return []
        _ = self.context_length, self.base_name  # resolve once, before any worker thread
        n = int(body["n"])
        jobs = self._plan(prompts, max_new_tokens, body)
        slots = [self._slots[k % len(self._slots)] for k in range(len(jobs))]
        if len(jobs) == 1:
            replies = [self._complete(slots[0], jobs[0][1], adapter)]
        else:
            with ThreadPoolExecutor(min(len(jobs), _MAX_CONCURRENT_REQUESTS)) as pool:
                replies = list(pool.map(lambda job, slot: self._complete(slot, job[1], adapter), jobs, slots))
        rows: dict[int, list[Sample]] = {}
        for (indices, _request), samples in zip(jobs, replies, strict=True):
            rows.update({i: samples[k * n : (k + 1) * n] for k, i in enumerate(indices)})
        return [row for i in range(len(prompts)) for row in rows[i]]

    def _plan(
        self, prompts: list[list[int]], max_new_tokens: int, body: JSONObject
    ) -> list[tuple[list[int], JSONObject]]:
        """(prompt indices, request body) per request.

        Unseeded: one request per server share and per ``max_tokens`` (prompts near the context limit
        get fewer). Seeded: one request per prompt with seed ``seed + i * n``, since vLLM seeds sample j
        of a request with ``seed + j`` and prompts sharing a request would share their random draws.
        """
        budgets = [min(max_new_tokens, self.context_length - len(p)) for p in prompts]
        too_long = [i for i, b in enumerate(budgets) if b < 1]
        if too_long:
            raise InvalidArgument(
                f"prompt {too_long[0]} has {len(prompts[too_long[0]])} tokens; the model's context is "
                f"{self.context_length}: shorten it"
            )
        seed = body.get("seed")
        if seed is not None:
            n = int(body["n"])
            return [
                ([i], {**body, "seed": int(seed) + i * n, "prompt": [p], "max_tokens": budgets[i]})
                for i, p in enumerate(prompts)
            ]
        size = -(-len(prompts) // min(len(self._slots), len(prompts)))
        jobs = []
        for start in range(0, len(prompts), size):
            share = range(start, min(start + size, len(prompts)))
            for budget in sorted({budgets[i] for i in share}):
                indices = [i for i in share if budgets[i] == budget]
                jobs.append(
                    (indices, {**body, "prompt": [prompts[i] for i in indices], "max_tokens": budget})
                )
        return jobs

    def _complete(self, slot: LoraSlots, request: JSONObject, adapter: AdapterRef | None) -> list[Sample]:
        request = {**request, "logprobs": 0, "return_token_ids": True, "return_tokens_as_token_ids": True}
        if adapter is None:
            return _parse_choices(slot.client.completions({**request, "model": self.base_name}))
        self._ensure(slot, adapter, served=None)
        try:
            reply = slot.client.completions({**request, "model": adapter.name})
        except NotFound:
            # The server restarted or someone unloaded the name: reload from what the server lists.
            slot.forget(adapter.name)
            self._ensure(slot, adapter, served=slot.client.loaded_adapters())
            reply = slot.client.completions({**request, "model": adapter.name})
        return _parse_choices(reply)

    # -- adapters ------------------------------------------------------------------------------------------
    def _ensure(self, slot: LoraSlots, adapter: AdapterRef, served: dict[str, str] | None) -> None:
        if not (adapter.path / "adapter_config.json").is_file():
            raise FailedPrecondition(
                f"adapter {adapter.name} is missing at {adapter.path}; the rollout worker and the vLLM server "
                "must see the trainer's adapter store (POLICYOPT_ADAPTER_STORE / POLICYOPT_DATA_DIR)"
            )
        if slot.ensure(adapter.name, adapter.path, served=served):
            self._prune(slot, adapter)

    def _prune(self, slot: LoraSlots, adapter: AdapterRef) -> None:
        """Unload versions of ``adapter``'s run that fell out of the staleness window."""
        versions = {adapter.name: adapter.version}
        for name in slot.names:
            parsed = parse_adapter_name(name)
            if parsed and parsed[0] == adapter.run_id:
                versions[name] = parsed[1]
        newest = max(versions.values())
        for name, version in versions.items():
            if name != adapter.name and version <= newest - self.max_loaded_adapters:
                slot.unload(name)


def _parse_choices(reply: JSONObject) -> list[Sample]:
    """Samples in ``choices`` order: index ``i * n + j`` is sample j of prompt i."""
    choices = sorted(reply.get("choices", []), key=lambda c: int(c["index"]))
    return [_to_sample(choice) for choice in choices]


def _to_sample(choice: dict[str, Any]) -> Sample:
    finish = _FINISH.get(str(choice.get("finish_reason")))
    if finish is None:
        raise Unavailable(f"vLLM ended a completion with finish_reason={choice.get('finish_reason')!r}")
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    ids = choice.get("token_ids")
    if ids is None:
        ids = [int(str(token).rsplit(":", 1)[1]) for token in logprobs.get("tokens") or []]
    if len(ids) != len(values) or any(v is None for v in values):
        raise FailedPrecondition(
            f"vLLM returned {len(ids)} token ids but {len(values)} log-probs; it must be a version whose "
            "/v1/completions supports logprobs with return_token_ids (vllm >= 0.10)"
        )
    return Sample(
        completion_ids=[int(i) for i in ids],
        sampler_logprobs=[float(v) for v in values],
        text=str(choice.get("text", "")),
        finish_reason=finish,
    )


__all__ = ["VLLMEngine"]
