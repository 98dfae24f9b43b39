"""Rollout engines: the ``RolloutEngine`` interface and its implementations, registered by name.

Public surface: ``RolloutEngine``, ``SamplingParams``, ``AdapterRef``, ``Sample``, ``create_engine``.
A run's ``config.engine`` names the implementation; an unknown name fails and lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from policyopt.core.errors import InvalidArgument
from policyopt.workers.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    AdapterRef,
    RolloutEngine,
    Sample,
    SamplingParams,
)

EngineFactory = Callable[..., RolloutEngine]


def _transformers(model_dir: Path, **options: object) -> RolloutEngine:
    from policyopt.workers.engines.transformers_engine import TransformersEngine

    kept = {k: v for k, v in options.items() if k not in _VLLM_ONLY}
    return TransformersEngine(model_dir, **kept)  # type: ignore[arg-type]


# Options one engine ignores, so a caller may pass the union (e.g. urls=settings.vllm_urls) to either.
_VLLM_ONLY = ("urls", "timeout_s", "max_loaded_adapters")
_TRANSFORMERS_ONLY = ("device", "dtype", "max_batch_rows")


def _vllm(model_dir: Path, **options: object) -> RolloutEngine:
    """Needs ``urls`` (``Settings.vllm_urls``); options that only mean something in-process are dropped."""
    from policyopt.workers.engines.vllm_engine import VLLMEngine

    kept = {k: v for k, v in options.items() if k not in _TRANSFORMERS_ONLY}
    kept.setdefault("urls", ())
    return VLLMEngine(model_dir, **kept)  # type: ignore[arg-type]


ENGINES: dict[str, EngineFactory] = {"transformers": _transformers, "vllm": _vllm}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: make ``create_engine(name, ...)`` call the decorated factory."""

    def wrap(factory: EngineFactory) -> EngineFactory:
        ENGINES[name] = factory
        return factory

    return wrap


def create_engine(name: str, model_dir: str | Path, **options: object) -> RolloutEngine:
    """Instantiate the engine registered as ``name`` for the model in ``model_dir``."""
    if name not in ENGINES:
        raise InvalidArgument(
            f"rollout engine {name!r} is unknown; known engines: {', '.join(sorted(ENGINES))}"
        )
    return ENGINES[name](Path(model_dir), **options)


__all__ = [
    "ENGINES",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "AdapterRef",
    "RolloutEngine",
    "Sample",
    "SamplingParams",
    "create_engine",
    "register_engine",
]
