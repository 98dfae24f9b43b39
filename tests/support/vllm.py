"""Helpers for the vLLM tests: publish adapter versions as the trainer does, recompute log-probs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from policyopt.core.types import AdapterManifest, RunConfig
from policyopt.models import ModelCatalog
from policyopt.state.adapter_store import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.placement import Placement
from policyopt.workers.train import policy

LORA_RANK = 16
LOGPROB_TOLERANCE = 1e-4
"""Max |vLLM - transformers+peft| per token, fp32 on CPU; measured on the tiny model: about 1e-6."""


def write_lora(model_dir: Path, dest: Path, seed: int, scale: float = 0.3) -> Path:
    """A PEFT LoRA (r=16, attention projections) of the tiny model with random non-zero B, saved in ``dest``.

    Built with the trainer's own ``load_policy``/``save_adapter``; B is non-zero so the adapter changes
    the outputs (a fresh LoRA has B = 0 and equals the base).
    """
    config = RunConfig(base_model=str(model_dir), lora_rank=LORA_RANK, lora_alpha=32, seed=seed)
    models = ModelCatalog(str(dest.parent), roots=(str(model_dir.parent),))
    model, _pad = policy.load_policy(config, Placement(torch.device("cpu"), torch.float32), models)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    dest.mkdir(parents=True, exist_ok=True)
    policy.save_adapter(model, dest)
    return dest


class Publisher:
    """Publishes versions of one run like the trainer: adapter store first, then ``commit_step``."""

    def __init__(
        self, r: redis.Redis, adapter_root: Path, model_dir: Path, staging: Path, tenant: str = "tenant"
    ) -> None:
        self.runs = RunStore(r)
        self.queue = WorkQueue(r)
        self.store = LocalAdapterStore(adapter_root)
        self.model_dir = model_dir
        self.staging = staging
        self.run_id = self.runs.create_run(tenant, RunConfig(base_model=str(model_dir))).run_id

    def publish(
        self, version: int, before_commit: Callable[[Path], None] | None = None
    ) -> tuple[Path, float]:
        """Write and commit ``version``; returns its directory and the time the commit returned.

        ``before_commit`` gets the version's directory in the store before the commit makes it visible.
        """
        files = write_lora(self.model_dir, self.staging / f"{self.run_id}-v{version}", seed=version)
        manifest = AdapterManifest(
            run_id=self.run_id, version=version, step=version, base_model=str(self.model_dir), method="grpo"
        )
        manifest = self.store.publish(self.run_id, version, files, manifest)  # with the files' digests
        if before_commit is not None:
            before_commit(self.store.version_dir(self.run_id, version))
        self.runs.commit_step(self.queue, manifest, [])
        return self.store.version_dir(self.run_id, version), time.time()


def recompute_logprobs(
    model_dir: Path,
    adapter_dir: Path | None,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits,
) -> torch.Tensor:
    """log p(completion_t | prompt, completion_<t) by one teacher-forced transformers (+peft) forward pass.

    ``transform`` maps logits ``[T, V]`` before the log-softmax (temperature, masks).
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    ids = torch.tensor([[*prompt_ids, *completion_ids]])
    with torch.no_grad():
        logits_L_V = model(input_ids=ids).logits[0].float()
    start = len(prompt_ids) - 1
    logits_T_V = transform(logits_L_V[start : start + len(completion_ids)])
    logp_T_V = torch.log_softmax(logits_T_V, dim=-1)
    return logp_T_V.gather(1, torch.tensor(completion_ids)[:, None]).squeeze(1)


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
