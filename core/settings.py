"""One settings object, read from environment variables and an optional TOML file.

Precedence: explicit keyword overrides > environment > TOML file (``POLICYOPT_CONFIG``) > defaults.
Each field is documented once, in README's Settings table.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from policyopt.core.errors import InvalidArgument


def _default_data_dir() -> str:
    return str(Path.home() / ".policyopt")


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    """External Redis/Valkey; None starts the embedded Valkey in ``data_dir/valkey``."""
    api_keys: dict[str, str] = field(default_factory=dict)
    """key -> tenant. Empty means auth is off (local use only: the server warns)."""
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str = field(default_factory=_default_data_dir)
    """Adapters, the embedded Valkey's append-only file, model caches."""
    adapter_store: str = ""
    """Root of the adapter store; empty means ``data_dir/adapters``."""
    device: str = "auto"
    """Training device: auto (cuda with bf16 when present, else cpu), cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """Model dtype of the trainer and the transformers rollout engine: auto (bf16 on a GPU that has it and
    on a CPU with AMX/AVX512-BF16, else fp32), float32, bfloat16 or float16."""
    torch_threads: int = 0
    """Threads per worker process; 0 picks cores // number of local torch processes."""
    telemetry: str = "off"
    """off, console or otlp."""
    otlp_endpoint: str = ""
    reward_timeout_s: float = 30.0
    """Deadline of one RewardService.Score call."""
    reward_retries: int = 3
    """Retries of transient reward-endpoint failures (UNAVAILABLE, DEADLINE_EXCEEDED)."""
    max_queued_prompts: int = 10000
    """Per run; SubmitPrompts beyond it gets RESOURCE_EXHAUSTED."""
    trainer_lease_ms: int = 30000
    """How long a trainer's run lease lives without renewal: how soon a dead trainer's runs move on."""
    claim_idle_ms: int = 60000
    """A pending message idle this long is claimed by another worker (its owner is presumed dead)."""
    log_level: str = "INFO"
    vllm_urls: tuple[str, ...] = ()
    """vLLM servers (``http://host:port``) for runs with ``engine="vllm"``; the rollout worker splits
    each batch across them. Env ``POLICYOPT_VLLM_URL``, comma-separated."""
    tls_cert: str = ""
    """Path of the PEM certificate (chain) the server presents; with ``tls_key`` it serves TLS only."""
    tls_key: str = ""
    """Path of the PEM private key of ``tls_cert``."""
    tls_client_ca: str = ""
    """Path of a PEM CA for mutual TLS: callers must present a certificate it signed (needs ``tls_cert``)."""
    redis_ca: str = ""
    """Path of the PEM CA that signed a ``rediss://`` Redis's certificate; empty: the system roots."""
    reflection_public: bool = False
    """Serve gRPC reflection to callers without an API key (it lists every method); health is always open."""
    endpoint_allowlist: tuple[str, ...] = ()
    """Where tenants' reward and teacher endpoints may point (``core/outbound.py`` has the syntax), e.g.
    ``10.0.0.0/8:50052,rewards.internal:443``; empty: public addresses only. Env comma-separated."""
    models: dict[str, str] = field(default_factory=dict)
    """Models tenants may name, name -> local directory or ``hf:org/model[@revision]`` (from the local
    Hugging Face cache). Env ``POLICYOPT_MODELS=name=/path,name2=hf:org/model``."""
    model_roots: tuple[str, ...] = ()
    """Directories under which tenants may name a model by absolute path. Env ``:``-separated."""
    # -- fair multi-tenancy (README "Limits and fairness") --------------------------------------------
    trainer_memory_mb: int = 8192
    """Memory a trainer keeps for runs: shared base models plus each run's LoRA, optimizer state and critic.
    Beyond it the least recently trained runs are evicted (their state is in the checkpoint)."""
    reward_concurrency: int = 8
    """Score calls in flight per reward endpoint and rollout worker; more wait for that endpoint only."""
    reward_max_attempts: int = 5
    """Rollouts of a prompt whose reward call failed transiently (endpoint down, deadline) before it is
    dropped with an ERROR event; each retry waits longer (``reward_retry_backoff_s``, doubling)."""
    reward_retry_backoff_s: float = 2.0
    """Wait before a prompt's first retry after a transient reward failure; doubles per retry, up to 60 s."""
    max_reward_timeout_s: float = 120.0
    """Largest ``timeout_s`` a tenant may register for a reward endpoint."""
    max_active_runs_per_tenant: int = 16
    """RUNNING runs a tenant may have; CreateRun beyond it is RESOURCE_EXHAUSTED."""
    max_queued_prompts_per_tenant: int = 50000
    """Prompts waiting for rollouts across all of a tenant's runs (``max_queued_prompts`` is per run)."""
    max_streams_per_tenant: int = 8
    """Open WatchRun, WatchAdapters and PullAdapter streams per tenant."""
    max_concurrent_rpcs_per_tenant: int = 16
    """Unary calls of one tenant served at once; the server's thread pool is sized so that every tenant's
    streams and calls at their limits leave room for the others."""
    max_request_mb: int = 16
    """Largest request message the server accepts (gRPC's receive limit)."""
    max_group_size: int = 64
    """Largest ``group_size`` (completions per prompt) a run may ask for."""
    max_prompts_per_step: int = 64
    """Largest ``prompts_per_step`` a run may ask for."""
    max_sequences_per_step: int = 512
    """Largest ``group_size * prompts_per_step``: the sequences one policy update trains on."""
    max_completion_tokens: int = 4096
    """Largest ``max_new_tokens``; prompt and completion must also fit the base model's context."""
    max_eval_prompts: int = 256
    """Held-out eval prompts per run (CreateRun ``eval.prompts`` plus AddEvalPrompts); each is sampled
    ``eval.samples`` times per evaluation, so this bounds what one evaluation costs the rollout workers."""
    max_upload_mb: int = 512
    """Largest adapter UploadAdapter accepts (all files together)."""
    # -- observability (README "Metrics and dashboard") ----------------------------------------------
    http_port: int = 8080
    """HTTP port of this process: ``/metrics`` (Prometheus) on every process, and the run dashboard at ``/``
    on the server. 0 picks a free port; -1 turns HTTP off. ``policyopt up`` gives each worker a free port."""
    http_host: str = ""
    """Address the HTTP port binds; empty: the same as ``host``."""
    tensorboard: bool = False
    """The trainer also writes each run's step metrics as TensorBoard event files under
    ``data_dir/tensorboard/RUN``."""
    sample_every: int = 10
    """The trainer keeps a few of a step's completions as a SAMPLE event every this many steps, for runs
    that set no ``sample_every`` of their own; 0: none."""
    # -- agents (README "Agents") --------------------------------------------------------------------
    episode_ttl_s: int = 3600
    """How long ``policyopt proxy`` keeps a session's recorded calls (and a task key's waiting episodes)
    after the last one; an agent that never calls FinishEpisode leaves nothing behind longer."""

    @property
    def adapter_root(self) -> Path:
        return Path(self.adapter_store) if self.adapter_store else Path(self.data_dir) / "adapters"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_ENV = {
    "REDIS_URL": "redis_url",
    "POLICYOPT_API_KEYS": "api_keys",
    "POLICYOPT_HOST": "host",
    "POLICYOPT_PORT": "port",
    "POLICYOPT_DATA_DIR": "data_dir",
    "POLICYOPT_ADAPTER_STORE": "adapter_store",
    "POLICYOPT_DEVICE": "device",
    "POLICYOPT_DTYPE": "dtype",
    "POLICYOPT_TORCH_THREADS": "torch_threads",
    "POLICYOPT_TELEMETRY": "telemetry",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint",
    "POLICYOPT_REWARD_TIMEOUT_S": "reward_timeout_s",
    "POLICYOPT_REWARD_RETRIES": "reward_retries",
    "POLICYOPT_MAX_QUEUED_PROMPTS": "max_queued_prompts",
    "POLICYOPT_CLAIM_IDLE_MS": "claim_idle_ms",
    "POLICYOPT_TRAINER_LEASE_MS": "trainer_lease_ms",
    "POLICYOPT_LOG_LEVEL": "log_level",
    "POLICYOPT_VLLM_URL": "vllm_urls",
    "POLICYOPT_TLS_CERT": "tls_cert",
    "POLICYOPT_TLS_KEY": "tls_key",
    "POLICYOPT_TLS_CLIENT_CA": "tls_client_ca",
    "POLICYOPT_REDIS_CA": "redis_ca",
    "POLICYOPT_REFLECTION_PUBLIC": "reflection_public",
    "POLICYOPT_ENDPOINT_ALLOWLIST": "endpoint_allowlist",
    "POLICYOPT_MODELS": "models",
    "POLICYOPT_MODEL_ROOTS": "model_roots",
    "POLICYOPT_TRAINER_MEMORY_MB": "trainer_memory_mb",
    "POLICYOPT_REWARD_CONCURRENCY": "reward_concurrency",
    "POLICYOPT_REWARD_MAX_ATTEMPTS": "reward_max_attempts",
    "POLICYOPT_REWARD_RETRY_BACKOFF_S": "reward_retry_backoff_s",
    "POLICYOPT_MAX_REWARD_TIMEOUT_S": "max_reward_timeout_s",
    "POLICYOPT_MAX_ACTIVE_RUNS_PER_TENANT": "max_active_runs_per_tenant",
    "POLICYOPT_MAX_QUEUED_PROMPTS_PER_TENANT": "max_queued_prompts_per_tenant",
    "POLICYOPT_MAX_STREAMS_PER_TENANT": "max_streams_per_tenant",
    "POLICYOPT_MAX_CONCURRENT_RPCS_PER_TENANT": "max_concurrent_rpcs_per_tenant",
    "POLICYOPT_MAX_REQUEST_MB": "max_request_mb",
    "POLICYOPT_MAX_GROUP_SIZE": "max_group_size",
    "POLICYOPT_MAX_PROMPTS_PER_STEP": "max_prompts_per_step",
    "POLICYOPT_MAX_SEQUENCES_PER_STEP": "max_sequences_per_step",
    "POLICYOPT_MAX_COMPLETION_TOKENS": "max_completion_tokens",
    "POLICYOPT_MAX_EVAL_PROMPTS": "max_eval_prompts",
    "POLICYOPT_MAX_UPLOAD_MB": "max_upload_mb",
    "POLICYOPT_HTTP_PORT": "http_port",
    "POLICYOPT_HTTP_HOST": "http_host",
    "POLICYOPT_TENSORBOARD": "tensorboard",
    "POLICYOPT_SAMPLE_EVERY": "sample_every",
    "POLICYOPT_EPISODE_TTL_S": "episode_ttl_s",
}


def parse_api_keys(text: str) -> dict[str, str]:
    """Parse ``tenant:key,tenant:key`` into key -> tenant."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        tenant, sep, key = pair.partition(":")
        if not sep or not tenant or not key:
            raise InvalidArgument(f"POLICYOPT_API_KEYS entry {pair!r} must look like tenant:key")
        keys[key] = tenant
    return keys


def _parse_bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise InvalidArgument(f"setting {name} must be true or false, got {raw!r}")
    return word in ("1", "true", "yes", "on")


def parse_models(text: str) -> dict[str, str]:
    """Parse ``name=/path,name2=hf:org/model`` into name -> source."""
    models: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, source = (part.strip() for part in pair.partition("="))
        if not sep or not name or not source:
            raise InvalidArgument(
                f"POLICYOPT_MODELS entry {pair!r} must look like name=/path or name=hf:org/model"
            )
        models[name] = source
    return models


def _coerce(name: str, raw: object) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if name == "api_keys":
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return parse_api_keys(str(raw))
    if name == "vllm_urls":
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
        return tuple(u.strip().rstrip("/") for u in items if str(u).strip())
    if name == "redis_url":
        return str(raw) or None
    if name == "endpoint_allowlist":
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
        return tuple(str(e).strip() for e in items if str(e).strip())
    if name == "models":
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return parse_models(str(raw))
    if name == "model_roots":
        items = raw if isinstance(raw, list | tuple) else str(raw).split(os.pathsep)
        return tuple(str(r).strip() for r in items if str(r).strip())
    if kind == "bool":
        return _parse_bool(name, raw)
    try:
        if kind == "int":
            return int(str(raw))
        if kind == "float":
            return float(str(raw))
    except ValueError as exc:
        raise InvalidArgument(f"setting {name} must be a number, got {raw!r}") from exc
    return str(raw)


def load_settings(config_file: str | None = None, **overrides: object) -> Settings:
    """Build Settings from TOML (``config_file`` or ``POLICYOPT_CONFIG``), the environment and overrides."""
    values: dict[str, object] = {}
    path = config_file or os.environ.get("POLICYOPT_CONFIG")
    if path:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
        table = table.get("policyopt", table)
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = set(table) - known
        if unknown:
            raise InvalidArgument(f"unknown settings in {path}: {sorted(unknown)}; known: {sorted(known)}")
        values.update({k: _coerce(k, v) for k, v in table.items()})
    for env, name in _ENV.items():
        if env in os.environ:
            values[name] = _coerce(name, os.environ[env])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]
