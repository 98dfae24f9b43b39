"""Requests of the evaluation and warm-start calls: CreateRun's eval options, AddEvalPrompts, UploadAdapter."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from policyopt.client.errors import InvalidArgument
from policyopt.client.structs import dict_to_struct
from policyopt.client.types import EvalOptions, JSONValue, Promotion, UploadedAdapter
from policyopt.v1 import policyopt_pb2 as pb

EVAL_OPTIONS = frozenset(EvalOptions.__annotations__)
UPLOAD_FILES = ("adapter_config.json", "adapter_model.safetensors")
UPLOAD_CHUNK_BYTES = 1 << 20


def eval_prompts_to_proto(
    prompts: Sequence[str], metadata: Sequence[Mapping[str, JSONValue]] | None
) -> list[pb.Prompt]:
    if isinstance(prompts, str):
        raise InvalidArgument("eval prompts must be a list of strings, not one string")
    if metadata is not None and len(metadata) != len(prompts):
        raise InvalidArgument(f"eval_metadata has {len(metadata)} entries for {len(prompts)} prompts")
    metas = metadata if metadata is not None else [{}] * len(prompts)
    try:
        return [pb.Prompt(text=t, metadata=dict_to_struct(m)) for t, m in zip(prompts, metas, strict=True)]
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"eval metadata must be JSON-like: {exc}") from exc


def apply_eval_options(request: pb.CreateRunRequest, options: EvalOptions) -> None:
    """Put ``create_run``'s evaluation, promotion, warm-start and retention options on ``request``."""
    spec = request.eval
    if "eval_prompts" in options:
        spec.prompts.extend(eval_prompts_to_proto(options["eval_prompts"], options.get("eval_metadata")))
    for option, name in [("eval_every", "every"), ("eval_samples", "samples"),
                         ("eval_temperature", "temperature"), ("success_threshold", "success_threshold")]:  # fmt: skip
        if option in options:
            setattr(spec, name, options[option])  # type: ignore[literal-required]
    spec.reward_endpoint = options.get("eval_reward_endpoint", "")
    promotion = options.get("promotion")
    if promotion is not None:
        request.promotion.CopyFrom(_promotion(promotion))
    retention = options.get("retention")
    if retention is not None:
        request.retention.keep_versions = retention.keep_versions
        request.retention.keep_trainer_states = retention.keep_trainer_states
    request.init_adapter = options.get("init_adapter", "")


def _promotion(promotion: Promotion) -> pb.PromotionSpec:
    if not isinstance(promotion, Promotion):
        raise TypeError(f"promotion must be a policyopt.client.Promotion, not {type(promotion).__name__}")
    spec = pb.PromotionSpec(rule=promotion.rule, margin=promotion.margin, threshold=promotion.threshold,
                            patience=promotion.patience)  # fmt: skip
    if promotion.stop_at_metric is not None:
        spec.stop_at_metric = promotion.stop_at_metric
    return spec


def upload_chunks(directory: str | os.PathLike[str], base_model: str) -> list[pb.UploadAdapterChunk]:
    """The PEFT files of ``directory`` as UploadAdapter chunks, each file's last chunk with its sha256."""
    root = Path(directory)
    missing = [name for name in UPLOAD_FILES if not (root / name).is_file()]
    if missing:
        raise InvalidArgument(f"{root} lacks {missing}; give the directory PEFT's save_pretrained wrote")
    chunks = [chunk for name in UPLOAD_FILES for chunk in _file_chunks(root / name)]
    chunks[0].base_model = base_model
    return chunks


def _file_chunks(path: Path) -> Iterator[pb.UploadAdapterChunk]:
    digest = hashlib.sha256()
    data = path.read_bytes()
    pieces = [data[i : i + UPLOAD_CHUNK_BYTES] for i in range(0, len(data), UPLOAD_CHUNK_BYTES)] or [b""]
    for i, piece in enumerate(pieces):
        digest.update(piece)
        last = i == len(pieces) - 1
        yield pb.UploadAdapterChunk(file_name=path.name, data=piece, last=last,
                                    sha256=digest.hexdigest() if last else "")  # fmt: skip


def uploaded_from_proto(response: pb.UploadedAdapter) -> UploadedAdapter:
    return UploadedAdapter(
        upload_id=response.upload_id,
        base_model=response.base_model,
        rank=response.rank,
        target_modules=tuple(response.target_modules),
        files=dict(response.files),
        alpha=response.alpha,
    )


__all__ = [
    "EVAL_OPTIONS",
    "apply_eval_options",
    "eval_prompts_to_proto",
    "upload_chunks",
    "uploaded_from_proto",
]
