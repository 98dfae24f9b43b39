"""The SDK's evaluation, promotion, warm-start and retention options land on the contract's fields."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from policyopt.client import InvalidArgument, Promotion, Retention, _calls
from policyopt.client._stub import ClientStreamRpc
from policyopt.v1 import policyopt_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyOptimizer"]


def test_create_run_sends_eval_promotion_init_adapter_and_retention() -> None:
    request = _calls.create_run(
        "model",
        {
            "eval_prompts": ["2 + 2?", "3 + 3?"],
            "eval_metadata": [{"answer": 4}, {"answer": 6}],
            "eval_every": 2,
            "eval_samples": 4,
            "eval_temperature": 0.7,
            "eval_reward_endpoint": "judge",
            "success_threshold": 0.5,
            "promotion": Promotion("beats_best", margin=0.1, stop_at_metric=0.9, patience=3),
            "init_adapter": "run-0123456789ab@v3",
            "retention": Retention(keep_versions=2, keep_trainer_states=1),
        },
    ).request
    spec = request.eval
    assert [p.text for p in spec.prompts] == ["2 + 2?", "3 + 3?"]
    assert spec.prompts[1].metadata["answer"] == 6
    assert (spec.every, spec.samples, spec.reward_endpoint) == (2, 4, "judge")
    assert (spec.temperature, spec.success_threshold) == (pytest.approx(0.7), 0.5)
    assert (request.promotion.rule, request.promotion.margin) == ("beats_best", pytest.approx(0.1))
    assert request.promotion.HasField("stop_at_metric") and request.promotion.patience == 3
    assert request.init_adapter == "run-0123456789ab@v3"
    assert (request.retention.keep_versions, request.retention.keep_trainer_states) == (2, 1)


def test_create_run_without_eval_options_leaves_them_unset() -> None:
    request = _calls.create_run("model", {}).request
    assert not request.eval.prompts and not request.eval.HasField("every")
    assert not request.HasField("promotion") and request.init_adapter == ""
    assert not request.promotion.HasField("stop_at_metric")


def test_eval_metadata_must_match_the_prompts() -> None:
    with pytest.raises(InvalidArgument, match="2 entries for 1 prompts"):
        _calls.add_eval_prompts("run-1", ["a"], [{}, {}])
    with pytest.raises(InvalidArgument, match="not one string"):
        _calls.add_eval_prompts("run-1", "abc")


def test_upload_adapter_streams_each_file_with_its_sha256_on_the_last_chunk(tmp_path: Path) -> None:
    config = b'{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "peft_type": "LORA"}'
    weights = bytes(range(256)) * ((3 << 20) // 256 + 7)  # a little over 3 MiB: four chunks
    (tmp_path / "adapter_config.json").write_bytes(config)
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)
    call = _calls.upload_adapter(tmp_path, "tiny")
    assert SERVICE.methods_by_name[call.method(_Names())].client_streaming
    chunks = call.requests
    assert chunks[0].base_model == "tiny" and all(c.base_model == "" for c in chunks[1:])
    by_file: dict[str, bytes] = {}
    for chunk in chunks:
        by_file[chunk.file_name] = by_file.get(chunk.file_name, b"") + chunk.data
    assert by_file == {"adapter_config.json": config, "adapter_model.safetensors": weights}
    lasts = [c for c in chunks if c.last]
    assert [c.sha256 for c in lasts] == [
        hashlib.sha256(config).hexdigest(),
        hashlib.sha256(weights).hexdigest(),
    ]
    assert len(chunks) == 5
    uploaded = call.convert(pb.UploadedAdapter(upload_id="ab" * 32, rank=4, target_modules=["q_proj"]))
    assert uploaded.init_adapter == "upload:" + "ab" * 32 and uploaded.target_modules == ("q_proj",)


def test_upload_adapter_refuses_a_directory_without_the_peft_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="adapter_model.safetensors"):
        _calls.upload_adapter(tmp_path, "tiny")


def test_the_upload_rpc_is_typed_as_a_client_stream() -> None:
    import typing

    from policyopt.client._stub import Stub

    assert typing.get_origin(typing.get_type_hints(Stub)["UploadAdapter"]) is ClientStreamRpc


class _Names:
    def __getattr__(self, name: str) -> str:
        return name
