"""Run mypy over the hand-written code with real ``policyopt.*`` import resolution.

The source folders map onto ``policyopt.*`` through setuptools' ``package-dir`` (``server`` is
``policyopt.server``), which mypy cannot read. This script lays out the same mapping as symlinks in
``build/typecheck/policyopt`` and runs mypy on that tree; generated protobuf code is left out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    farm = ROOT / "build" / "typecheck"
    shutil.rmtree(farm, ignore_errors=True)
    for package, folder in sorted(package_dir.items()):
        target = farm / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py*"):
            shutil.copy2(source, target / source.name)
    # -p checks a package with its sub-packages, so name only the outermost ones.
    tops = [
        n for n in package_dir if n != "policyopt.v1" and not any(n.startswith(o + ".") for o in package_dir)
    ]
    packages = [arg for name in sorted(tops) for arg in ("-p", name)]
    cmd = [sys.executable, "-m", "mypy", "--namespace-packages", "--explicit-package-bases", *packages]
    result = subprocess.run(cmd, cwd=farm, capture_output=True, text=True)
    # Report paths as they are in the source tree, longest mapping first.
    output = result.stdout + result.stderr
    for package, folder in sorted(package_dir.items(), key=lambda kv: -len(kv[0])):
        output = output.replace(package.replace(".", "/") + "/", folder + "/")
    print(output, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
