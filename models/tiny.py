"""``tiny``: a 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, built from nothing.

It takes about a second and needs no download; tests, CI and ``policyopt demo --model tiny`` use it.
head_dim is 32, the smallest vLLM's CPU backend accepts.
"""

from __future__ import annotations

import random
from pathlib import Path

# ChatML, with tools the Hermes way Qwen2.5 and SmolLM use: the tool schemas in a system turn, calls as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call> in the assistant's text (``policyopt proxy`` parses
# them), results as ``tool`` turns. Without tools and tool calls it renders plain ChatML.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>\n' }}{% for tool in tools %}{{ tool | tojson + '\n' }}{% endfor %}"
    '{{ \'</tools>\nCall a tool with <tool_call>{"name": NAME, "arguments": {...}}</tool_call>\''
    " + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>{\"name\": ' + call['function']['name'] | tojson + ', \"arguments\": '"
    " + call['function']['arguments'] | tojson + '}</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
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


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model"]
