"""The long-lived and chunked streams: run events, new adapter versions, adapter files.

Each loop blocks on Redis for at most ``poll_ms`` at a time and stops as soon as the client cancels
(``is_active()`` turns false) or the run has ended and everything has been sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from policyopt.core.errors import FailedPrecondition
from policyopt.core.identifiers import is_plain_file_name, quote
from policyopt.core.types import AdapterManifest, RunEvent, RunStatus
from policyopt.state.connection import text
from policyopt.state.evals import EvalStore
from policyopt.state.runs import PUBLISHED_STREAM, RunStore

CHUNK_BYTES = 1 << 20
IsActive = Callable[[], bool]


def _is_running(store: RunStore, run_id: str) -> bool:
    return store.get_run(run_id).status == RunStatus.RUNNING


def run_events(
    store: RunStore, run_id: str, after_id: str, is_active: IsActive, poll_ms: int
) -> Iterator[RunEvent]:
    """Events after ``after_id`` (checked by ``identifiers.event_id``), following the run until it ends or
    the client leaves."""
    cursor = after_id or "0"
    while is_active():
        ended = not _is_running(store, run_id)  # read before the events: the final STATUS is among them
        events = store.read_events(run_id, cursor, block_ms=None if ended else poll_ms)
        for event in events:
            yield event
            cursor = event.event_id
        if ended and not events:
            return


def _last_published_id(store: RunStore) -> str:
    newest = store.r.xrevrange(PUBLISHED_STREAM, count=1)
    return text(newest[0][0]) if newest else "0-0"


def _follow_versions(
    store: RunStore,
    run_id: str,
    after_version: int,
    is_active: IsActive,
    poll_ms: int,
    *,
    shown: Callable[[AdapterManifest], bool],
    ended: Callable[[], bool],
    wake_up: Callable[[str, int], list[tuple[str, str, int]]],
    cursor: str,
) -> Iterator[AdapterManifest]:
    """The run's ``shown`` versions above ``after_version``, listed again whenever ``wake_up`` (a stream
    read after ``cursor``) says something changed, until ``ended``; the streams are only wake-ups."""
    sent = after_version
    while is_active():
        done = ended()  # read before listing: what the run did before it ended is listed then
        for manifest in store.list_versions(run_id):
            if shown(manifest) and manifest.version > sent:
                yield manifest
                sent = manifest.version
        if done:
            return
        woken = wake_up(cursor, poll_ms)
        if woken:
            cursor = woken[-1][0]


def new_versions(
    store: RunStore, run_id: str, after_version: int, is_active: IsActive, poll_ms: int
) -> Iterator[AdapterManifest]:
    """Versions above ``after_version`` as they are published, until the run ends."""
    return _follow_versions(
        store, run_id, after_version, is_active, poll_ms,
        shown=lambda manifest: True,
        ended=lambda: not _is_running(store, run_id),
        wake_up=store.read_published,
        cursor=_last_published_id(store),  # taken before listing: nothing published in between is missed
    )  # fmt: skip


def promoted_versions(
    evals: EvalStore, store: RunStore, run_id: str, after_version: int, is_active: IsActive, poll_ms: int
) -> Iterator[AdapterManifest]:
    """Promoted versions above ``after_version``, as they are promoted (after their evaluation), until the
    run has ended and no evaluation of it is queued or in progress. An evaluation leaves the queue in the
    MULTI that records its outcome, so one that ends as the watch sees the queue empty is listed."""
    return _follow_versions(
        store, run_id, after_version, is_active, poll_ms,
        shown=lambda manifest: manifest.promoted,
        ended=lambda: not _is_running(store, run_id) and not evals.pending(run_id),
        wake_up=evals.read_promoted,
        cursor=evals.last_promoted_id(),
    )  # fmt: skip


def file_chunks(directory: Path, manifest: AdapterManifest) -> Iterator[tuple[str, bytes, bool, str]]:
    """(file name, data, last, sha256 on the last chunk) for every file of the manifest, in name order."""
    for name in sorted(manifest.files):
        if not is_plain_file_name(name):
            raise FailedPrecondition(
                f"manifest of {manifest.run_id} v{manifest.version} names an unsafe file {quote(name)}"
            )
        path = directory / name
        if not path.is_file():
            raise FailedPrecondition(
                f"adapter file {name} of run {manifest.run_id} version {manifest.version} is missing from "
                f"the adapter store at {directory}; check POLICYOPT_ADAPTER_STORE on the server"
            )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            data = fh.read(CHUNK_BYTES)
            while True:
                digest.update(data)
                following = fh.read(CHUNK_BYTES)
                if not following:
                    yield name, data, True, digest.hexdigest()
                    break
                yield name, data, False, ""
                data = following
