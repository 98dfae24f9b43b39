"""Protobuf -> ``policyopt.core.types`` for held-out evaluation, promotion and retention (CreateRun's
``eval``, ``promotion`` and ``retention``; AddEvalPrompts' prompts). Unset optional fields take the
defaults of ``EvalConfig`` and ``PromotionConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence

from policyopt.core.types import EvalConfig, EvalPrompt, PromotionConfig, RetentionConfig
from policyopt.server.request_structs import struct_from_request
from policyopt.v1 import policyopt_pb2 as pb


def eval_config_from_request(request: pb.CreateRunRequest) -> EvalConfig:
    """``eval``; ``every`` unset with eval prompts given evaluates every version."""
    spec, defaults = request.eval, EvalConfig()
    every = spec.every if spec.HasField("every") else (1 if spec.prompts else defaults.every)
    return EvalConfig(
        every=every,
        samples=spec.samples if spec.HasField("samples") else defaults.samples,
        reward_endpoint=spec.reward_endpoint,
        temperature=spec.temperature if spec.HasField("temperature") else defaults.temperature,
        success_threshold=(
            spec.success_threshold if spec.HasField("success_threshold") else defaults.success_threshold
        ),
    )


def promotion_config_from_proto(spec: pb.PromotionSpec) -> PromotionConfig:
    defaults = PromotionConfig()
    return PromotionConfig(
        rule=spec.rule or defaults.rule,
        margin=spec.margin if spec.HasField("margin") else defaults.margin,
        threshold=spec.threshold if spec.HasField("threshold") else defaults.threshold,
        stop_at_metric=spec.stop_at_metric if spec.HasField("stop_at_metric") else None,
        patience=spec.patience if spec.HasField("patience") else defaults.patience,
    )


def retention_config_from_proto(spec: pb.RetentionSpec) -> RetentionConfig:
    return RetentionConfig(keep_versions=spec.keep_versions, keep_trainer_states=spec.keep_trainer_states)


def eval_prompts_from_proto(prompts: Sequence[pb.Prompt], where: str) -> list[EvalPrompt]:
    """Eval prompts (text + metadata for the reward endpoint); ``where`` names the field in messages."""
    return [
        EvalPrompt(text=p.text, metadata=struct_from_request(p.metadata, f"{where}[{i}].metadata"))
        for i, p in enumerate(prompts)
    ]


__all__ = [
    "eval_config_from_request",
    "eval_prompts_from_proto",
    "promotion_config_from_proto",
    "retention_config_from_proto",
]
