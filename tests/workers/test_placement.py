"""One placement helper for the trainer, the rollout engines and a local teacher: device, dtype, threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from policyopt.core.errors import FailedPrecondition, InvalidArgument
from policyopt.workers import placement
from policyopt.workers.placement import Placement, configure_threads, load_model, resolve_placement


@pytest.mark.parametrize(("native_bf16", "expected"), [(False, torch.float32), (True, torch.bfloat16)])
def test_auto_on_a_machine_without_cuda_is_the_cpu_in_bf16_where_it_multiplies_bf16_natively(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: native_bf16)
    assert resolve_placement("auto") == Placement(torch.device("cpu"), expected)
    assert resolve_placement("") == resolve_placement("auto")
    assert resolve_placement("cpu", "float32").dtype == torch.float32  # POLICYOPT_DTYPE=float32 opts out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx512f amx_bf16 amx_tile", True),
        ("fpu avx512f avx512_bf16", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert placement.cpu_has_native_bf16(str(cpuinfo)) is expected
    assert placement.cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float32", torch.float32),
    ],
)
def test_an_explicit_dtype_is_kept(dtype: str, expected: torch.dtype) -> None:
    assert resolve_placement("cpu", dtype) == Placement(torch.device("cpu"), expected)


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_a_gpu_gets_bf16_where_it_has_it_and_fp32_elsewhere_never_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert resolve_placement("auto") == Placement(torch.device("cuda"), expected)
    assert resolve_placement("cuda:1").dtype == expected


def test_settings_that_name_nothing_are_invalid_and_missing_cuda_is_a_failed_precondition() -> None:
    with pytest.raises(InvalidArgument, match="POLICYOPT_DEVICE='tpu' is not auto, cpu, cuda or cuda:N"):
        resolve_placement("tpu")
    with pytest.raises(InvalidArgument, match="dtype 'int8' is unknown"):
        resolve_placement("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(FailedPrecondition, match="torch sees no CUDA device; set POLICYOPT_DEVICE=cpu"):
            resolve_placement("cuda")


def test_zero_threads_takes_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(placement.os, "cpu_count", lambda: 8)
    try:
        assert configure_threads(0) == 4 and torch.get_num_threads() == 4
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_load_model_places_the_weights_and_pads_on_the_left(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir, resolve_placement("cpu", "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training and tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None


def test_bf16_on_the_cpu_loads_with_eager_attention_and_nothing_else_does() -> None:
    """Eager attention makes bf16 sampler and trainer log-probs agree (tests/workers/engines/test_bf16_logprobs.py)."""
    cpu_bf16 = placement.model_kwargs(Placement(torch.device("cpu"), torch.bfloat16))
    assert cpu_bf16 == {"dtype": torch.bfloat16, "attn_implementation": "eager"}
    assert placement.model_kwargs(Placement(torch.device("cpu"), torch.float32)) == {"dtype": torch.float32}
    assert "attn_implementation" not in placement.model_kwargs(
        Placement(torch.device("cuda"), torch.bfloat16)
    )
