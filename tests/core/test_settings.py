"""Settings: defaults, a TOML file, the environment over the file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyopt.core.errors import InvalidArgument
from policyopt.core.settings import load_settings, parse_api_keys


def test_environment_wins_over_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "policyopt.toml"
    config.write_text('[policyopt]\nport = 6000\ndata_dir = "/srv/po"\napi_keys = { "k1" = "team" }\n')
    monkeypatch.setenv("POLICYOPT_PORT", "7000")
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = load_settings(str(config))
    assert settings.port == 7000 and settings.data_dir == "/srv/po"
    assert settings.api_keys == {"k1": "team"} and settings.redis_url is None
    assert settings.adapter_root == Path("/srv/po/adapters")


def test_api_keys_parse_tenant_key_pairs() -> None:
    assert parse_api_keys("a:key-a, b:key-b") == {"key-a": "a", "key-b": "b"}
    with pytest.raises(InvalidArgument, match="tenant:key"):
        parse_api_keys("just-a-key")


def test_unknown_toml_settings_and_bad_numbers_say_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(InvalidArgument, match="unknown settings.*prot"):
        load_settings(str(config))
    monkeypatch.setenv("POLICYOPT_PORT", "fifty")
    with pytest.raises(InvalidArgument, match="port must be a number"):
        load_settings()
