"""The committed generated code matches what tools/gen_proto.py produces from the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    gen_proto.generate(tmp_path)
    fresh_dir = tmp_path / "policyopt" / "v1"
    committed_dir = ROOT / "proto" / "policyopt" / "v1"
    fresh = {p.name for p in fresh_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    committed = {p.name for p in committed_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    assert fresh == committed, "generated file set drifted; run `python tools/gen_proto.py`"
    drifted = [n for n in sorted(fresh) if (fresh_dir / n).read_bytes() != (committed_dir / n).read_bytes()]
    assert not drifted, f"{drifted} differ from the .proto files; run `python tools/gen_proto.py` and commit"
