"""Regenerate the committed protobuf and gRPC code beside the .proto files.

Usage: ``python tools/gen_proto.py [OUT_DIR]`` (default: ``proto/``, i.e. in place).
``tests/test_proto_drift.py`` runs it into a temporary directory and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "policyopt" / "v1"


def proto_files() -> list[Path]:
    """The contract's .proto files, relative to ``proto/`` as protoc wants them."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run grpc_tools.protoc with python_out, pyi_out and grpc_python_out into ``out_dir``."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    generate(out_dir)
    print(f"generated {len(proto_files())} proto files into {out_dir}")


if __name__ == "__main__":
    main()
