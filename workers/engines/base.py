"""The rollout engine interface: token ids in, sampled completions with per-token log-probs out.

Two implementations fit behind it: ``TransformersEngine`` (embedded, CPU default) and a vLLM engine
talking to an OpenAI-compatible server with runtime LoRA loading. An engine knows nothing of Redis,
gRPC or runs; the rollout worker hands it prompt token ids and the adapter version to sample with.

Log-prob convention (``Sample.sampler_logprobs``)
-----------------------------------------------
``sampler_logprobs[t]`` is ``log p_sampler(token_t | prefix)`` under the distribution the token was
actually drawn from, *after* processing:

    z = logits / temperature;  mask z outside top-k and outside the top-p nucleus to -inf;
    sampler_logprobs[t] = log_softmax(z)[token_t]

This is vLLM's ``logprobs_mode="processed_logprobs"``. With ``temperature=1, top_p=1, top_k=0`` it equals
the raw model log-prob ``log_softmax(logits)[token_t]``, which is what a trainer's teacher-forced forward
pass recomputes. With ``temperature != 1`` a trainer should divide its logits by the same temperature
before comparing; with ``top_p < 1`` or ``top_k > 0`` the sampler's log-prob is the renormalized one
(>= the full-vocabulary log-prob), and the importance-ratio / mismatch correction sees that gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

FINISH_STOP = "stop"  # the model emitted an end-of-sequence token (kept in completion_ids)
FINISH_LENGTH = "length"  # max_new_tokens was reached


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; the neutral defaults make sampler log-probs equal raw model log-probs."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    seed: int | None = None
    """Seeds the sampler for this call when set, for reproducible tests and benchmarks."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (use greedy() for argmax decoding), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class AdapterRef:
    """One published LoRA version: a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""

    run_id: str
    version: int
    path: Path

    @property
    def name(self) -> str:
        """Stable name an engine registers the adapter under (vLLM's ``lora_name``)."""
        return f"{self.run_id}@v{self.version}"


@dataclass(frozen=True)
class Sample:
    """One completion. ``completion_ids`` include the EOS token when ``finish_reason`` is ``stop``.

    ``sampler_logprobs`` has one entry per completion id; see the module docstring for what it means.
    """

    completion_ids: list[int]
    sampler_logprobs: list[float]
    text: str
    finish_reason: str


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples completions from a base model, optionally with a LoRA adapter version."""

    @property
    def context_length(self) -> int:
        """Maximum prompt + completion tokens."""
        ...

    def encode_chat(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` as one user message, with the chat template's generation prompt."""
        ...

    def sample(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt: result[i][j] is sample j of prompt i."""
        ...

    def greedy(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        max_new_tokens: int,
        adapter: AdapterRef | None = None,
    ) -> list[Sample]:
        """One argmax completion per prompt (ReMax baselines); log-probs are raw model log-probs."""
        ...

    def close(self) -> None:
        """Free the model (and any server connection)."""
        ...
