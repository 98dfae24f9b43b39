"""Prometheus metrics of every process, defined in one place, on ``prometheus_client.REGISTRY``.

Labels stay bounded: RPC method and status code names, reward endpoint addresses, process roles and
operations, and run ids, whose series are forgotten when the run stops being active (``forget_run``,
``forget_inactive_runs``). Prompt text and tenants' payloads never become labels.

- The server counts RPCs (``server.interceptors.MetricsInterceptor``) and reports the queues of RUNNING
  runs at scrape time (``register_server_collector``); its ``/metrics`` is served by its HTTP app.
- Workers serve ``/metrics`` on ``settings.http_port`` themselves (``serve_metrics``): the rollout worker
  counts sampled tokens and reward calls, the trainer steps, versions and the runs it holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from policyopt.core.settings import Settings

log = logging.getLogger(__name__)

# -- server -------------------------------------------------------------------------------------------
RPC_REQUESTS = Counter(
    "policyopt_rpc_requests", "gRPC calls handled, by method and status code (streams: when they end).",
    ["method", "code"],
)  # fmt: skip
RPC_DURATION = Histogram(
    "policyopt_rpc_duration_seconds", "gRPC call duration (streams: until they end), by method.", ["method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)  # fmt: skip

# -- rollout worker -----------------------------------------------------------------------------------
ROLLOUT_TOKENS = Counter(
    "policyopt_rollout_tokens", "Completion tokens sampled for the run (rate() gives tokens/s).", ["run_id"]
)
ROLLOUT_SECONDS = Counter(
    "policyopt_rollout_seconds", "Seconds spent sampling the run's completions.", ["run_id"]
)
ROLLOUT_TOKENS_PER_SECOND = Gauge(
    "policyopt_rollout_tokens_per_second", "Completion tokens per second of the run's last sampled batch.",
    ["run_id"],
)  # fmt: skip
ROLLOUT_GROUPS = Counter(
    "policyopt_rollout_groups", "Trajectory groups sampled for the run (prompts x group_size completions).",
    ["run_id"],
)  # fmt: skip
REWARD_CALL_DURATION = Histogram(
    "policyopt_reward_call_duration_seconds", "Duration of one Score call attempt, by endpoint address.",
    ["endpoint"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)  # fmt: skip
REWARD_CALL_ERRORS = Counter(
    "policyopt_reward_call_errors",
    "Score calls that failed after their retries, by endpoint address and gRPC status (BAD_SCORES: wrong "
    "count or non-finite; CIRCUIT_OPEN: refused by the circuit breaker).",
    ["endpoint", "code"],
)
REWARD_CALL_RETRIES = Counter(
    "policyopt_reward_call_retries", "Score attempts retried after a transient failure, by endpoint address.",
    ["endpoint"],
)  # fmt: skip

# -- trainer ------------------------------------------------------------------------------------------
TRAINER_STEP_SECONDS = Gauge(
    "policyopt_trainer_last_step_duration_seconds", "Duration of the run's last committed train step.",
    ["run_id"],
)  # fmt: skip
TRAINER_REWARD_MEAN = Gauge(
    "policyopt_trainer_reward_mean", "Mean raw reward of the groups of the run's last committed step.",
    ["run_id"],
)  # fmt: skip
TRAINER_REWARD_COMPONENT = Gauge(
    "policyopt_trainer_reward_component_mean",
    "Mean of a named reward component over the run's last committed step (reward/component/NAME).",
    ["run_id", "component"],
)  # fmt: skip
TRAINER_OPTIMIZER_STEPS = Counter(
    "policyopt_trainer_optimizer_steps", "Optimizer steps taken for the run (committed train steps).",
    ["run_id"],
)  # fmt: skip
VERSIONS_PUBLISHED = Counter(
    "policyopt_adapter_versions_published", "Adapter versions of the run this trainer published.", ["run_id"]
)
TRAINER_RUNS = Gauge(
    "policyopt_trainer_runs", "Runs this trainer holds: state=leased (run leases) or loaded (sessions in memory).",
    ["state"],
)  # fmt: skip

# -- every process ------------------------------------------------------------------------------------
REDIS_ERRORS = Counter(
    "policyopt_redis_errors", "Redis errors caught and survived, by process role and operation.",
    ["role", "operation"],
)  # fmt: skip

PER_RUN_METRICS: tuple[Counter | Gauge, ...] = (
    ROLLOUT_TOKENS, ROLLOUT_SECONDS, ROLLOUT_TOKENS_PER_SECOND, ROLLOUT_GROUPS,
    TRAINER_STEP_SECONDS, TRAINER_REWARD_MEAN, TRAINER_OPTIMIZER_STEPS, VERSIONS_PUBLISHED,
)  # fmt: skip
"""Metrics whose only label is ``run_id``: ``forget_run`` removes a run's series from each."""

_lock = threading.Lock()
_runs_with_series: set[str] = set()
_run_components: dict[str, set[str]] = {}  # run -> component names with a TRAINER_REWARD_COMPONENT series
_role = "process"


def set_role(role: str) -> None:
    """Name this process's role (server, rollout, trainer) for the ``role`` label of Redis errors."""
    global _role
    _role = role


def redis_error(operation: str) -> None:
    """Count one caught Redis error of this process in ``operation`` (a fixed name, never a key)."""
    REDIS_ERRORS.labels(_role, operation).inc()


def record_rollout(run_id: str, completion_tokens: int, seconds: float, groups: int) -> None:
    """One sampled batch of the run: its completion tokens, sampling time and groups."""
    _track(run_id)
    ROLLOUT_TOKENS.labels(run_id).inc(completion_tokens)
    ROLLOUT_SECONDS.labels(run_id).inc(max(0.0, seconds))
    ROLLOUT_GROUPS.labels(run_id).inc(groups)
    if seconds > 0:
        ROLLOUT_TOKENS_PER_SECOND.labels(run_id).set(completion_tokens / seconds)


def record_train_step(run_id: str, step_metrics: dict[str, float]) -> None:
    """A committed train step of the run (its metrics as the updater reported them): one version published."""
    _track(run_id)
    TRAINER_OPTIMIZER_STEPS.labels(run_id).inc(step_metrics.get("trajectory/optimizer_steps", 1.0))
    VERSIONS_PUBLISHED.labels(run_id).inc()
    if "trainer/step_seconds" in step_metrics:
        TRAINER_STEP_SECONDS.labels(run_id).set(step_metrics["trainer/step_seconds"])
    if "reward/mean" in step_metrics:
        TRAINER_REWARD_MEAN.labels(run_id).set(step_metrics["reward/mean"])
    for key, value in step_metrics.items():
        if key.startswith("reward/component/"):
            component = key.removeprefix("reward/component/")
            TRAINER_REWARD_COMPONENT.labels(run_id, component).set(value)
            with _lock:
                _run_components.setdefault(run_id, set()).add(component)


def _track(run_id: str) -> None:
    with _lock:
        _runs_with_series.add(run_id)


def forget_run(run_id: str) -> None:
    """Remove the run's series from every per-run metric (the run ended or went inactive)."""
    with _lock:
        _runs_with_series.discard(run_id)
        components = _run_components.pop(run_id, set())
    for component in components:
        with contextlib.suppress(KeyError):
            TRAINER_REWARD_COMPONENT.remove(run_id, component)
    for metric in PER_RUN_METRICS:
        with contextlib.suppress(KeyError):  # no series of the run in this metric
            metric.remove(run_id)


def forget_inactive_runs(active: Iterable[str]) -> list[str]:
    """Forget the series of every run that is not in ``active``; returns the runs forgotten."""
    keep = set(active)
    with _lock:
        gone = sorted(_runs_with_series - keep)
    for run_id in gone:
        forget_run(run_id)
    return gone


# -- serving /metrics from a worker --------------------------------------------------------------------
@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server of this process (a daemon thread); ``close()`` stops it."""

    server: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def http_host(settings: Settings) -> str:
    """The address the HTTP port binds: ``http_host``, else the gRPC ``host``."""
    return settings.http_host or settings.host


def url_host(host: str) -> str:
    """``host`` as a client reaches it: wildcard addresses become loopback; IPv6 gets brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve_metrics(settings: Settings, role: str) -> MetricsEndpoint | None:
    """Serve ``/metrics`` on ``settings.http_port`` (0: a free port) in a daemon thread and print where;
    None when ``http_port`` is negative (HTTP off). Also names this process's role (``set_role``)."""
    set_role(role)
    if settings.http_port < 0:
        return None
    host = http_host(settings)
    try:
        server, thread = start_http_server(settings.http_port, addr=host)
    except OSError as exc:
        raise OSError(
            f"cannot serve {role} /metrics on {host}:{settings.http_port} ({exc}); set POLICYOPT_HTTP_PORT to a "
            "free port (0: any free port, -1: HTTP off). Processes on one machine need a port each; "
            "`policyopt up` gives each its own"
        ) from exc
    endpoint = MetricsEndpoint(server, thread, host)
    print(f"policyopt {role} metrics on {endpoint.url}", flush=True)
    log.info("%s metrics on %s", role, endpoint.url)
    return endpoint


# -- scrape-time gauges of the server ------------------------------------------------------------------
ACTIVE_RUNS_KEY = "po:runs:active"
DELAYED_PROMPTS_KEY = "po:prompts:delayed"
MAX_SCRAPED_RUNS = 2000
"""Runs one scrape reports at most (a bound on series and on the scrape's Redis work)."""


class QueueCollector(Collector):
    """Queue depths of RUNNING runs, read from Redis when Prometheus scrapes: one pipelined round trip
    (counter, XLEN, XPENDING summary per run) plus one for the tenants of runs not seen before.

    Key names follow ``state.queue`` (core cannot import state; ``tests/core/test_metrics.py`` checks them).
    """

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._tenants: dict[str, str] = {}  # run id -> tenant (a run's tenant never changes)

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known at collect time; an empty describe skips a collect at register

    def collect(self) -> Iterator[Metric]:
        try:
            depths, delayed = self._read()
        except redis.RedisError as exc:
            redis_error("scrape_queues")
            log.warning("metrics scrape could not read the queues from Redis: %s", exc)
            return
        families = {
            "prompts_queued": "Prompts submitted to the run and not yet turned into groups (with delayed ones).",
            "prompts_pending": "Prompts of the run claimed by a rollout worker and not yet acked.",
            "groups_queued": "Scored groups of the run waiting for (or held by) its trainer.",
            "groups_pending": "Groups of the run read by a trainer for a step not yet committed.",
        }
        for index, (name, doc) in enumerate(families.items()):
            family = GaugeMetricFamily(f"policyopt_{name}", doc, labels=["run_id", "tenant"])
            for run_id, values in depths.items():
                family.add_metric([run_id, self._tenants.get(run_id, "")], values[index])
            yield family
        yield GaugeMetricFamily("policyopt_runs_active", "Runs in the RUNNING state.", value=len(depths))
        yield GaugeMetricFamily(
            "policyopt_prompts_delayed", "Prompts of all runs waiting for a retry or a deferred turn.",
            value=delayed,
        )  # fmt: skip

    def _read(self) -> tuple[dict[str, tuple[int, int, int, int]], int]:
        run_ids = sorted(_text(i) for i in self.r.smembers(ACTIVE_RUNS_KEY))[:MAX_SCRAPED_RUNS]
        self._learn_tenants(run_ids)
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.get(f"po:run:{run_id}:queued")
            pipe.xpending(f"po:run:{run_id}:prompts", "rollout")
            pipe.xlen(f"po:run:{run_id}:groups")
            pipe.xpending(f"po:run:{run_id}:groups", "trainer")
        pipe.zcard(DELAYED_PROMPTS_KEY)
        replies = pipe.execute(raise_on_error=False)
        depths = {}
        for i, run_id in enumerate(run_ids):
            queued, prompts_pending, groups, groups_pending = replies[4 * i : 4 * i + 4]
            depths[run_id] = (
                _count(queued),
                _pending(prompts_pending),
                _count(groups),
                _pending(groups_pending),
            )
        return depths, _count(replies[-1])

    def _learn_tenants(self, run_ids: list[str]) -> None:
        for gone in set(self._tenants) - set(run_ids):
            del self._tenants[gone]
        new = [run_id for run_id in run_ids if run_id not in self._tenants]
        if not new:
            return
        pipe = self.r.pipeline(transaction=False)
        for run_id in new:
            pipe.hget(f"po:run:{run_id}", "data")
        for run_id, raw in zip(new, pipe.execute(raise_on_error=False), strict=True):
            self._tenants[run_id] = _tenant_of(raw)


def _tenant_of(raw: object) -> str:
    if not isinstance(raw, bytes | str):
        return ""
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    tenant = data.get("tenant", "") if isinstance(data, dict) else ""
    return tenant if isinstance(tenant, str) else ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(reply: object) -> int:
    """An integer reply (GET of a counter, XLEN, ZCARD); 0 for a missing key or an error reply."""
    if isinstance(reply, Exception) or reply is None:
        return 0
    try:
        return max(0, int(reply))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _pending(reply: object) -> int:
    """The count of an XPENDING summary; 0 when the stream or its group does not exist yet."""
    return _count(reply.get("pending")) if isinstance(reply, dict) else 0


_server_collector: QueueCollector | None = None


def register_server_collector(r: redis.Redis) -> QueueCollector:
    """Report the queue gauges of RUNNING runs from ``r`` at each scrape of ``REGISTRY`` (the server calls
    this once; a second call replaces the first collector). Also names this process ``server``."""
    global _server_collector
    set_role("server")
    with _lock:
        if _server_collector is not None:
            REGISTRY.unregister(_server_collector)
        _server_collector = QueueCollector(r)
        REGISTRY.register(_server_collector)
        return _server_collector


def unregister_server_collector() -> None:
    """Stop reporting the queue gauges (a server that stops within a longer-lived process, e.g. tests)."""
    global _server_collector
    with _lock:
        if _server_collector is not None:
            REGISTRY.unregister(_server_collector)
            _server_collector = None


__all__ = [
    "REDIS_ERRORS",
    "RPC_DURATION",
    "RPC_REQUESTS",
    "MetricsEndpoint",
    "QueueCollector",
    "forget_inactive_runs",
    "forget_run",
    "record_rollout",
    "record_train_step",
    "redis_error",
    "register_server_collector",
    "serve_metrics",
    "set_role",
    "unregister_server_collector",
]
