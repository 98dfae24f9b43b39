"""Models by name: operator-declared names (local paths or hub ids from the local Hugging Face cache), the
built-ins, and paths under declared roots; anything else is PERMISSION_DENIED naming POLICYOPT_MODELS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyopt.client import Client, PermissionDenied
from policyopt.core.errors import FailedPrecondition
from policyopt.core.errors import PermissionDenied as DomainPermissionDenied
from policyopt.core.settings import Settings
from policyopt.models import ModelCatalog

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding ``org/tiny`` at ``main``, laid out as huggingface_hub writes it."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_declared_hub_id_loads_from_the_local_cache_offline(hf_cache: Path, tmp_path: Path) -> None:
    catalog = ModelCatalog(str(tmp_path), {"small": "hf:org/tiny", "pinned": f"hf:org/tiny@{REVISION}"})
    expected = hf_cache / "models--org--tiny" / "snapshots" / REVISION
    assert catalog.resolve("small") == expected
    assert catalog.resolve("pinned") == expected


def test_a_hub_model_missing_from_the_cache_says_so(hf_cache: Path, tmp_path: Path) -> None:
    catalog = ModelCatalog(str(tmp_path), {"big": "hf:org/not-cached"})
    with pytest.raises(
        FailedPrecondition, match="not in the service's Hugging Face cache.*hf download org/not-cached"
    ):
        catalog.resolve("big")


def test_a_declared_local_path_is_named_by_its_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (
        ModelCatalog(str(tmp_path), {"tiny-local": str(tiny_model_dir)}).resolve("tiny-local")
        == tiny_model_dir
    )


@pytest.mark.parametrize("name", ["~", "~/models/x", "models/x", "/etc", "/usr/share/../../etc"])
def test_undeclared_paths_and_home_directories_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(DomainPermissionDenied, match="POLICYOPT_MODELS"):
        ModelCatalog(str(tmp_path), roots=(str(tmp_path),)).resolve(name)


def test_paths_under_a_declared_root_are_allowed_but_symlinks_out_of_it_are_not(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "model"
    shutil.copytree(tiny_model_dir, inside)
    (root / "escape").symlink_to(tiny_model_dir)
    catalog = ModelCatalog(str(tmp_path), roots=(str(root),))
    assert catalog.resolve(str(inside)) == inside
    with pytest.raises(DomainPermissionDenied):
        catalog.resolve(str(root / "escape"))
    with pytest.raises(DomainPermissionDenied):
        catalog.resolve(str(root / ".." / "root" / ".." / tiny_model_dir.relative_to("/")))


@pytest.fixture
def hub_client(valkey_url: str, data_dir: Path, hf_cache: Path) -> Iterator[Client]:
    """A server that declares one hub model by name and no model roots."""
    from policyopt.server.app import build_server

    settings = Settings(
        redis_url=valkey_url, api_keys={"hub-key": "hub"}, port=0, data_dir=str(data_dir),
        models={"small": "hf:org/tiny"},
    )  # fmt: skip
    with (
        build_server(settings, max_workers=4, poll_ms=200) as running,
        Client(running.address, api_key="hub-key", timeout=60) as client,
    ):
        yield client


def test_a_tenant_names_a_declared_hub_model_and_cannot_name_its_path(
    hub_client: Client, hf_cache: Path
) -> None:
    run = hub_client.create_run("small", method="grpo", group_size=2)
    assert run.info.base_model == "small"
    with pytest.raises(PermissionDenied, match="POLICYOPT_MODELS"):
        hub_client.create_run(str(hf_cache / "models--org--tiny" / "snapshots" / REVISION), method="grpo")
