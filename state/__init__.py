"""policyopt.state: the service's durable state, shared by the server and the workers.

- ``connection``: connecting to Redis/Valkey (``connect``) and reading stream replies.
- ``queue``: ``WorkQueue``, prompts and trajectory groups on Redis Streams with consumer groups.
- ``runs``: ``RunStore``, runs, reward endpoints, run events and the adapter index in Redis.
- ``adapter_store``: ``AdapterStore``, versioned adapter directories (atomic publish, sha256 manifests),
  with ``adapter_manifest`` for the manifest file itself.

The records kept here are ``policyopt.core.types``. Nothing here imports torch, gRPC or the workers.
"""

from policyopt.state.adapter_manifest import read_manifest, sha256_file, verify_files, write_manifest
from policyopt.state.adapter_store import AdapterStore, LocalAdapterStore
from policyopt.state.connection import connect
from policyopt.state.queue import WorkQueue, consumer_name
from policyopt.state.runs import PUBLISHED_STREAM, RunStore

__all__ = [
    "PUBLISHED_STREAM",
    "AdapterStore",
    "LocalAdapterStore",
    "RunStore",
    "WorkQueue",
    "connect",
    "consumer_name",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]
