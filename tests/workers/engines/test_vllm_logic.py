"""The vLLM engine's and serving sync's logic without a vLLM server (fake HTTP client, real Valkey)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from policyopt.core.errors import InvalidArgument, NotFound, Unavailable
from policyopt.core.settings import load_settings
from policyopt.workers.engines import FINISH_LENGTH, FINISH_STOP, create_engine
from policyopt.workers.engines.vllm_engine import VLLMEngine, _parse_choices
from policyopt.workers.engines.vllm_http import ALREADY_LOADED, VLLMClient, _http_error
from policyopt.workers.engines.vllm_lora import LoraSlots, fingerprint, parse_adapter_name
from policyopt.workers.serving import ServingSync, parse_pin


class FakeVLLM:
    """The LoRA admin surface of VLLMClient, in memory; counts loads per name."""

    base_url = "http://fake"

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.loads: list[str] = []

    def loaded_adapters(self) -> dict[str, str]:
        return dict(self.adapters)

    def load_lora(self, name: str, path: str) -> None:
        if name in self.adapters:
            raise InvalidArgument(f"The lora adapter '{name}' {ALREADY_LOADED}.")
        self.adapters[name] = path
        self.loads.append(name)

    def unload_lora(self, name: str) -> bool:
        return self.adapters.pop(name, None) is not None


def _version_dir(root: Path, content: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"files": {"adapter_model.safetensors": content}}))
    return root


def test_adapter_names_round_trip_and_foreign_names_are_ignored() -> None:
    assert parse_adapter_name("run-abc@v12") == ("run-abc", 12)
    assert parse_adapter_name("base") is None
    assert parse_adapter_name("my-lora@latest") is None


def test_pins_accept_bare_versions_only_with_a_run() -> None:
    assert parse_pin("3", "run-a") == ("run-a", 3)
    assert parse_pin("v3", "run-a") == ("run-a", 3)
    assert parse_pin("run-b@v2", None) == ("run-b", 2)
    with pytest.raises(InvalidArgument, match="--run"):
        parse_pin("3", None)
    with pytest.raises(InvalidArgument, match="version number"):
        parse_pin("latest", "run-a")


def test_slots_keep_a_name_they_loaded_and_reload_it_when_its_files_change(tmp_path: Path) -> None:
    fake = FakeVLLM()
    slots = LoraSlots(fake)  # type: ignore[arg-type]
    path = _version_dir(tmp_path / "v1", "aaa")
    assert slots.ensure("r@v1", path, served=fake.loaded_adapters())
    assert not slots.ensure("r@v1", path, served=fake.loaded_adapters())
    before = fingerprint(path)
    _version_dir(path, "bbb")
    assert fingerprint(path) != before
    assert slots.ensure("r@v1", path, served=fake.loaded_adapters())
    assert fake.loads == ["r@v1", "r@v1"]


def test_slots_never_trust_a_name_someone_else_loaded(tmp_path: Path) -> None:
    fake = FakeVLLM()
    path = _version_dir(tmp_path / "v1", "aaa")
    fake.adapters["r@v1"] = str(path)  # loaded by another process, content unknown to us
    slots = LoraSlots(fake)  # type: ignore[arg-type]
    assert slots.ensure("r@v1", path, served=fake.loaded_adapters())
    assert fake.loads == ["r@v1"]


def test_slots_reload_after_the_server_forgot_the_name(tmp_path: Path) -> None:
    fake = FakeVLLM()
    slots = LoraSlots(fake)  # type: ignore[arg-type]
    path = _version_dir(tmp_path / "v1", "aaa")
    slots.ensure("r@v1", path)
    fake.adapters.clear()  # a vLLM restart
    assert slots.ensure("r@v1", path, served=fake.loaded_adapters())
    assert fake.adapters == {"r@v1": str(path)}


def test_choices_become_samples_in_index_order_with_eos_kept() -> None:
    reply = {
        "choices": [
            {"index": 1, "finish_reason": "stop", "text": "b", "token_ids": [7, 3],
             "logprobs": {"token_logprobs": [-0.5, -0.25]}},
            {"index": 0, "finish_reason": "length", "text": "a", "token_ids": None,
             "logprobs": {"tokens": ["token_id:5"], "token_logprobs": [-1.0]}},
        ]
    }  # fmt: skip
    samples = _parse_choices(reply)
    assert [s.completion_ids for s in samples] == [[5], [7, 3]]
    assert [s.finish_reason for s in samples] == [FINISH_LENGTH, FINISH_STOP]
    assert samples[1].sampler_logprobs == [-0.5, -0.25]


def test_seeded_sampling_gives_each_prompt_its_own_seeds(tmp_path: Path) -> None:
    engine = VLLMEngine(tmp_path, urls=["http://a", "http://b"])
    engine._context_length = 100
    prompts = [[1] * 10, [2] * 10, [3] * 95]
    seeded = engine._plan(prompts, 8, {"n": 4, "seed": 100})
    assert [request["seed"] for _, request in seeded] == [100, 104, 108]
    assert [request["max_tokens"] for _, request in seeded] == [8, 8, 5]
    batched = engine._plan(prompts, 8, {"n": 4})
    assert sorted(i for indices, _ in batched for i in indices) == [0, 1, 2]
    assert all("seed" not in request for _, request in batched)


def test_a_prompt_without_room_is_refused(tmp_path: Path) -> None:
    engine = VLLMEngine(tmp_path, urls="http://a")
    engine._context_length = 10
    with pytest.raises(InvalidArgument, match="shorten it"):
        engine._plan([[1] * 10], 4, {"n": 1})


def test_the_engine_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="POLICYOPT_VLLM_URL"):
        create_engine("vllm", tmp_path, device="cpu", urls=())


def test_vllm_urls_setting_reads_a_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYOPT_VLLM_URL", "http://a:1/, http://b:2")
    assert load_settings().vllm_urls == ("http://a:1", "http://b:2")


def test_serving_sync_wants_pins_and_the_newest_published_version(valkey_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(valkey_url)
    sync = ServingSync(r, tmp_path, ["http://fake"], run_id="run-a", pins=["1"], max_loras=2)
    sync.observe(
        [("1000-0", "run-a", 2), ("1001-0", "run-b", 9), ("1002-0", "run-a", 3), ("1003-0", "run-a", 2)]
    )
    assert list(sync.wanted()) == ["run-a@v1", "run-a@v3"]
    assert sync.wanted()["run-a@v3"] == tmp_path / "run-a" / "v000003"
    assert sync._published_at["run-a@v3"] == pytest.approx(1.002)


def test_serving_sync_refuses_no_endpoints(valkey_url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--vllm"):
        ServingSync(redis.Redis.from_url(valkey_url), tmp_path, [])


def test_http_errors_map_to_our_errors() -> None:
    with pytest.raises(Unavailable, match="unreachable"):
        VLLMClient("http://127.0.0.1:9", timeout_s=2).models()
    assert isinstance(_http_error("u", "/v1/models", 404, b'{"error": {"message": "gone"}}'), NotFound)
    assert "gone" in str(_http_error("u", "/x", 404, b'{"error": {"message": "gone"}}'))
