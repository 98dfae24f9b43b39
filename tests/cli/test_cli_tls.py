"""``policyopt --tls-ca/--tls-cert/--tls-key`` against TLS and mutual-TLS servers, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tls import TlsFiles, make_tls

from policyopt.core.settings import Settings
from policyopt.server.app import build_server

KEY = "key-cli-tls"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def serving(valkey_url: str, data_dir: Path, tls: TlsFiles, client_ca: str) -> Iterator[str]:
    settings = Settings(
        redis_url=valkey_url,
        api_keys={KEY: "cli-tls"},
        port=0,
        data_dir=str(data_dir),
        tls_cert=str(tls.server_cert),
        tls_key=str(tls.server_key),
        tls_client_ca=client_ca,
    )
    with build_server(settings, max_workers=4) as running:
        yield running.address


@pytest.fixture(scope="module")
def tls_address(valkey_url: str, data_dir: Path, tls: TlsFiles) -> Iterator[str]:
    yield from serving(valkey_url, data_dir, tls, "")


@pytest.fixture(scope="module")
def mtls_address(valkey_url: str, data_dir: Path, tls: TlsFiles) -> Iterator[str]:
    yield from serving(valkey_url, data_dir, tls, str(tls.ca))


def policyopt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLICYOPT_TLS_")}
    return subprocess.run(
        [sys.executable, "-m", "policyopt.cli.main", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def test_runs_lists_over_tls_with_the_ca(tls_address: str, tls: TlsFiles) -> None:
    result = policyopt("--address", tls_address, "--api-key", KEY, "--tls-ca", str(tls.ca), "runs")
    assert result.returncode == 0, result.stderr
    assert "no runs" in result.stdout


def test_the_ca_may_come_from_the_environment(tls_address: str, tls: TlsFiles) -> None:
    result = policyopt("--address", tls_address, "--api-key", KEY, "methods", POLICYOPT_TLS_CA=str(tls.ca))
    assert result.returncode == 0, result.stderr
    assert "grpo" in result.stdout


def test_without_the_ca_the_error_says_to_use_tls(tls_address: str) -> None:
    result = policyopt("--address", tls_address, "--api-key", KEY, "runs")
    assert result.returncode == 1
    assert "error (Unavailable)" in result.stderr and "--tls-ca" in result.stderr


def test_mutual_tls_needs_the_client_certificate(mtls_address: str, tls: TlsFiles) -> None:
    base = ("--address", mtls_address, "--api-key", KEY, "--tls-ca", str(tls.ca))
    refused = policyopt(*base, "runs")
    assert refused.returncode == 1 and "--tls-cert" in refused.stderr
    accepted = policyopt(*base, "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key), "runs")
    assert accepted.returncode == 0, accepted.stderr


def test_a_missing_ca_file_is_named(tls_address: str, tmp_path: Path) -> None:
    result = policyopt("--address", tls_address, "--tls-ca", str(tmp_path / "nope.pem"), "runs")
    assert result.returncode == 1
    assert "error (InvalidArgument)" in result.stderr and "nope.pem" in result.stderr
