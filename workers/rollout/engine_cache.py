"""The rollout worker's engines: one per (engine, base model), loaded on first use, least recently used out.

A worker samples for many runs; runs on one base model share its engine. Beyond ``max_engines`` the
least recently used engine closes (its memory, or its vLLM adapters, go with it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from policyopt.core.settings import Settings
from policyopt.core.types import RunConfig
from policyopt.models import ModelCatalog
from policyopt.workers.engines import RolloutEngine, create_engine

log = logging.getLogger(__name__)


class EngineCache:
    """Engines by (engine name, model directory), at most ``max_engines`` open."""

    def __init__(self, settings: Settings, models: ModelCatalog, max_engines: int = 1) -> None:
        self.settings, self.models, self.max_engines = settings, models, max_engines
        self._engines: OrderedDict[tuple[str, Path], RolloutEngine] = OrderedDict()

    def engine_for(self, config: RunConfig) -> RolloutEngine:
        """The engine for the run's base model, loaded once."""
        model_dir = self.models.resolve(config.base_model)
        key = (config.engine, model_dir)
        if key not in self._engines:
            while len(self._engines) >= self.max_engines:
                _, old = self._engines.popitem(last=False)
                old.close()
            log.info("loading %s engine for %s", config.engine, model_dir)
            # vLLM keeps a window of versions per run (the newest plus those a rollout may lag behind
            # by); the transformers engine keeps each run's newest versions under its own LRU cap.
            options: dict[str, object] = (
                {"max_loaded_adapters": config.max_staleness + 1} if config.engine == "vllm" else {}
            )
            self._engines[key] = create_engine(
                config.engine,
                model_dir,
                device=self.settings.device,
                dtype=self.settings.dtype,
                urls=self.settings.vllm_urls,
                **options,
            )
        self._engines.move_to_end(key)
        return self._engines[key]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


__all__ = ["EngineCache"]
