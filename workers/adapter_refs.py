"""The adapter an engine samples a run's version with: one lookup for the rollout worker and the proxy."""

from __future__ import annotations

from policyopt.core.errors import FailedPrecondition, NotFound
from policyopt.core.types import Run
from policyopt.state import AdapterStore, LocalAdapterStore
from policyopt.workers.engines import AdapterRef


def open_adapter(
    adapters: AdapterStore, run: Run, version: int | None = None, *, reader: str
) -> AdapterRef | None:
    """The run's adapter at ``version`` (default: its newest); None for a fresh run's version 0 (the base).

    A version the store lacks means ``reader`` (e.g. "the proxy") does not see the trainer's adapter store:
    FailedPrecondition, naming the setting to fix.
    """
    version = run.version if version is None else version
    if version == 0 and not run.config.init_adapter:
        return None
    try:
        path = adapters.open_version(run.run_id, version)
    except NotFound as exc:
        here = f", here {adapters.root}" if isinstance(adapters, LocalAdapterStore) else ""
        raise FailedPrecondition(
            f"{exc}; {reader} must read the trainer's adapter store (POLICYOPT_ADAPTER_STORE{here})"
        ) from exc
    return AdapterRef(run_id=run.run_id, version=version, path=path)


__all__ = ["open_adapter"]
