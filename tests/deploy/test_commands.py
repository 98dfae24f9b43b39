"""What the manifests run exists: each policyopt container's command is a real ``policyopt`` subcommand
with real flags, and every environment variable they set is a setting the code reads or a documented
third-party one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache

import pytest
from support.manifests import KUSTOMIZE_ROOT, OVERLAYS, Manifest, containers, render

from policyopt.core.settings import _ENV

# Read by the CLI's client flags (cli/main.py) and model lookup, not by Settings.
CLI_ENV = {"POLICYOPT_ADDRESS", "POLICYOPT_API_KEY", "POLICYOPT_CONFIG", "POLICYOPT_TLS_CA"}
CLI_ENV |= {"POLICYOPT_TLS_CLIENT_CERT", "POLICYOPT_TLS_CLIENT_KEY"}
THIRD_PARTY_ENV = {
    "HF_HOME": "Hugging Face cache root (huggingface_hub); models/catalog.py reads hub ids from it",
    "HF_HUB_OFFLINE": "huggingface_hub: never reach the Hub from a pod",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "vLLM: enables /v1/load_lora_adapter (docs/vllm.md)",
    "HOME": "POSIX: the vLLM image's user has no home on a read-only root",
    "XDG_CACHE_HOME": "XDG base directories: caches of vLLM's libraries (triton, torch)",
}
SUBSTITUTION = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")


@pytest.fixture(scope="module")
def objects() -> list[Manifest]:
    return [obj for overlay in OVERLAYS for obj in render(KUSTOMIZE_ROOT / "overlays" / overlay)]


def policyopt_argv(container: Manifest) -> list[str] | None:
    """The ``policyopt`` arguments a container runs, or None for a container that is not policyopt."""
    command, args = container.get("command"), container.get("args", [])
    if command is None:
        return list(args) if container["image"].startswith("policyopt:") else None
    argv = [*command, *args]
    if command[0] == "torchrun":
        assert "-m" in argv and argv[argv.index("-m") + 1] == "policyopt.cli.main", argv
        return argv[argv.index("-m") + 2 :]
    if command[0] == "policyopt":
        return argv[1:]
    return None


@cache
def help_text(*words: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "policyopt.cli.main", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"`policyopt {' '.join(words)} --help` failed:\n{done.stderr}"
    return done.stdout


def split_command(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(global flags and values, subcommand words, the rest) of a policyopt command line."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        index += 2  # every global flag takes a value
    words = [argv[index]]
    if argv[index] == "worker":
        words.append(argv[index + 1])
    return argv[:index], words, argv[index + len(words) :]


def test_every_policyopt_container_runs_a_real_subcommand_with_real_flags(objects: list[Manifest]) -> None:
    checked = set()
    for where, container, _ in containers(objects):
        argv = policyopt_argv(container)
        if argv is None:
            continue
        global_flags, words, rest = split_command(argv)
        top = help_text()
        for flag in global_flags[::2]:
            assert re.search(rf"\s{re.escape(flag)}\b", top), f"{where}: no global flag {flag}"
        sub = help_text(*words[:1])
        if len(words) > 1:
            assert words[1] in sub, f"{where}: `policyopt {' '.join(words)}` is not a subcommand"
        for flag in (a for a in rest if a.startswith("--")):
            assert re.search(rf"\s{re.escape(flag)}\b", sub), f"{where}: `policyopt {words[0]}` has no {flag}"
        checked.add(" ".join(words))
    assert checked == {"serve", "worker rollout", "worker train", "serving-sync"}


def test_every_environment_variable_the_manifests_set_is_known(objects: list[Manifest]) -> None:
    known = set(_ENV) | CLI_ENV | set(THIRD_PARTY_ENV)
    config_maps = {
        o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap" and "data" in o
    }
    for where, container, _ in containers(objects):
        substituted = {m for arg in container.get("args", []) for m in SUBSTITUTION.findall(arg)}
        names = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                names |= set(config_maps[source["configMapRef"]["name"]])
        unknown = names - known - substituted
        assert not unknown, f"{where} sets {sorted(unknown)}: not a setting (core/settings.py _ENV) or known"
