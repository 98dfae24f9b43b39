"""The built wheel holds every module of the source tree, and each one imports from the wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ALL = r"""
import importlib, sys
# Drop the editable install's finder so every import below resolves inside the unpacked wheel.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
target = sys.argv[1]
failed = []
for name in sys.argv[2:]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
        continue
    if not str(getattr(module, "__file__", "") or "").startswith(target):
        failed.append(f"{name} imported from {module.__file__}, not the wheel")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _source_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    modules = []
    for package, folder in package_dir.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            modules.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return modules


def test_every_source_folder_with_python_is_a_listed_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapped = {str((ROOT / d).resolve()) for d in config["tool"]["setuptools"]["package-dir"].values()}
    assert set(config["tool"]["setuptools"]["packages"]) == set(config["tool"]["setuptools"]["package-dir"])
    for top in ("core", "state", "models", "server", "client", "workers", "cli", "proto/policyopt/v1"):
        for init in (ROOT / top).rglob("*.py"):
            if "__pycache__" in init.parts:
                continue
            assert str(init.parent.resolve()) in mapped, (
                f"{init.parent} holds Python but is not in package-dir"
            )


@pytest.mark.slow
def test_built_wheel_imports_every_module(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("policyopt-*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(target)
    modules = _source_modules()
    for module in modules:
        as_path = module.replace(".", "/")
        assert f"{as_path}.py" in names or f"{as_path}/__init__.py" in names, (
            f"{module} missing from the wheel"
        )
    assert "policyopt/v1/policyopt.proto" in names
    assert "policyopt/__init__.py" not in names, "policyopt must stay a namespace package"
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(target), *modules],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
