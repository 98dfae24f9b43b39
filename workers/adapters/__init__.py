"""policyopt.workers.adapters: versioned adapter storage (``AdapterStore``) and manifest helpers."""

from policyopt.workers.adapters.manifest import read_manifest, sha256_file, verify_files, write_manifest
from policyopt.workers.adapters.store import AdapterStore, LocalAdapterStore

__all__ = [
    "AdapterStore",
    "LocalAdapterStore",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]
