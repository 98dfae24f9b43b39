"""Rendering deploy/kubernetes with ``kubectl kustomize`` for tests/deploy (no cluster needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = REPO / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")

Manifest = dict[str, Any]


def kubectl() -> str:
    """The kubectl executable; skips outside CI when it is missing (CI must have it)."""
    found = shutil.which("kubectl")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("kubectl is not installed: CI renders deploy/kubernetes with `kubectl kustomize`")
    pytest.skip("kubectl is not installed (needed to render deploy/kubernetes; CI has it)")


def render(directory: Path) -> list[Manifest]:
    """Every object `kubectl kustomize DIRECTORY` renders."""
    done = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every workload."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(objects: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(kind/name/container, container, pod spec) of every container, init containers included."""
    for where, spec in pod_specs(objects):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{where}/{container['name']}", container, spec


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def config_map_data(objects: list[Manifest]) -> dict[str, str]:
    """The policyopt settings ConfigMap's data (its name carries the generator's hash suffix)."""
    maps = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("policyopt-settings")
    ]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data
