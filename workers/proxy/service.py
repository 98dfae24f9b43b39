"""``policyopt proxy``: load the run's engine and serve the OpenAI-compatible endpoint until stopped."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

import redis
from transformers import AutoTokenizer

from policyopt.core.api_keys import DEFAULT_TENANT
from policyopt.core.http_server import HttpServer
from policyopt.core.identifiers import run_id as checked_run_id
from policyopt.core.settings import Settings
from policyopt.models import ModelCatalog
from policyopt.state import LocalAdapterStore, RunStore, connect
from policyopt.state.episodes import EpisodeStore
from policyopt.workers.engines import RolloutEngine, create_engine
from policyopt.workers.proxy.app import build_proxy_app
from policyopt.workers.proxy.completions import ChatCompletions
from policyopt.workers.proxy.prompts import PromptBuilder

log = logging.getLogger(__name__)


class Proxy:
    """The proxy of one run on ``host:port`` (0: a free port): ``start()``, ``stop()``, or a context manager.

    ``engine`` names the rollout engine (default: the run's own, ``transformers`` or ``vllm`` at
    ``Settings.vllm_urls``); ``base_url`` is what an OpenAI client takes.
    """

    def __init__(
        self,
        settings: Settings,
        run_id: str,
        *,
        engine: str = "",
        host: str = "127.0.0.1",
        port: int = 8000,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.r = redis_client if redis_client is not None else connect(settings)
        runs = RunStore(self.r)
        run = runs.get_run(checked_run_id(run_id))
        model_dir = ModelCatalog.from_settings(settings).resolve(run.config.base_model)
        name = engine or run.config.engine
        options: dict[str, object] = {"max_loaded_adapters": 2} if name == "vllm" else {}
        self.engine: RolloutEngine = create_engine(
            name, model_dir, device=settings.device, dtype=settings.dtype, urls=settings.vllm_urls, **options
        )
        completions = ChatCompletions(
            run.run_id,
            runs,
            LocalAdapterStore(settings.adapter_root),
            EpisodeStore(self.r, settings.episode_ttl_s),
            self.engine,
            PromptBuilder(AutoTokenizer.from_pretrained(model_dir)),
        )
        if not settings.api_keys:
            log.warning(
                "POLICYOPT_API_KEYS is empty: the proxy serves tenant %r without a key", DEFAULT_TENANT
            )
        self.http = HttpServer(build_proxy_app(completions, settings.api_keys), host, port, "policyopt proxy")
        log.info("proxy for run %s with the %s engine (%s)", run.run_id, name, model_dir)

    @property
    def base_url(self) -> str:
        """The OpenAI client's ``base_url``."""
        return f"{self.http.url}v1"

    def start(self) -> Proxy:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()
        self.engine.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_proxy(
    settings: Settings, run_id: str, *, engine: str = "", host: str = "", port: int = 8000
) -> None:
    """Serve until SIGINT or SIGTERM."""
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with Proxy(settings, run_id, engine=engine, host=host or settings.host, port=port) as proxy:
        print(f"policyopt proxy for {run_id}: base_url={proxy.base_url}", flush=True)
        stopped.wait()


__all__ = ["Proxy", "serve_proxy"]
