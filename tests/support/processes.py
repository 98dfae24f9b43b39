"""Helpers for tests that kill and restart real service processes: health, versions, manifests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from policyopt.client import Client
from policyopt.core.errors import PolicyOptError
from policyopt.server.app import SERVICE_NAME


def health_status(address: str, service: str = SERVICE_NAME, timeout_s: float = 1.0) -> str:
    """The server's health for ``service`` (``SERVING``, ``NOT_SERVING``), or the call's status code name
    (``UNAVAILABLE`` while no server listens)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return str(exc.code().name)  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for_health(address: str, wanted: str, timeout_s: float, service: str = SERVICE_NAME) -> float:
    """Poll until the health is ``wanted``; the seconds it took."""
    start = time.monotonic()
    seen = ""
    while time.monotonic() - start < timeout_s:
        seen = health_status(address, service)
        if seen == wanted:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"health of {service or 'the server'} stayed {seen}, not {wanted}, for {timeout_s}s")


def wait_for_version(client: Client, run_id: str, version: int, timeout_s: float) -> float:
    """Poll ListAdapters until ``version`` is published, riding out a server or Redis restart; seconds taken."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout_s:
        try:
            versions = [v.version for v in client.list_adapters(run_id)]
            if versions and max(versions) >= version:
                return time.monotonic() - start
            last = versions
        except PolicyOptError as exc:  # UNAVAILABLE while a child restarts
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"run {run_id} did not reach version {version} in {timeout_s}s; last: {last}")


def manifest_group_ids(adapter_root: Path, run_id: str) -> dict[int, list[str]]:
    """Each published version's trained group ids, read from the adapter store's manifests."""
    found = {}
    for path in sorted((adapter_root / run_id).glob("v*/manifest.json")):
        manifest = json.loads(path.read_text())
        found[int(manifest["version"])] = list(manifest["group_ids"])
    return found
