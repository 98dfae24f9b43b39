"""The outbound policy (SSRF guard): allowlist syntax, the default refusals, connect-time re-checks, base URLs."""

from __future__ import annotations

import pytest

from policyopt.core.errors import InvalidArgument, PermissionDenied
from policyopt.core.outbound import OutboundPolicy, parse_base_url
from policyopt.core.settings import Settings, load_settings


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    return resolve


PUBLIC_DNS = resolver({"rewards.example": ["93.184.216.34"], "rebinds.example": ["10.1.2.3"]})


@pytest.mark.parametrize(
    "host, port",
    [
        ("127.0.0.1", 50052),  # loopback
        ("::1", 50052),
        ("::ffff:127.0.0.1", 50052),  # IPv4-mapped loopback
        ("169.254.169.254", 80),  # cloud metadata (link-local)
        ("fe80::1", 80),
        ("10.0.0.5", 443),  # private ranges
        ("192.168.1.1", 443),
        ("0.0.0.0", 443),  # unspecified
        ("224.0.0.1", 443),  # multicast
        ("93.184.216.34", 0),  # port 0
        ("rebinds.example", 443),  # a name resolving to a private address
        ("nowhere.example", 443),  # a name that does not resolve
    ],
)
def test_the_default_policy_refuses_everything_but_public_addresses(host: str, port: int) -> None:
    with pytest.raises(PermissionDenied, match="POLICYOPT_ENDPOINT_ALLOWLIST"):
        OutboundPolicy(resolver=PUBLIC_DNS).check(host, port, "reward endpoint 'x'")


def test_the_default_policy_allows_public_addresses_and_names() -> None:
    policy = OutboundPolicy(resolver=PUBLIC_DNS)
    assert policy.check("93.184.216.34", 443, "x") == ["93.184.216.34"]
    assert policy.connect_host("rewards.example", 443, "x") == "93.184.216.34"


def test_every_refusal_reads_the_same_whatever_the_reason() -> None:
    policy = OutboundPolicy(resolver=PUBLIC_DNS)
    messages = set()
    for host in ("127.0.0.1", "rebinds.example", "nowhere.example", "169.254.169.254"):
        with pytest.raises(PermissionDenied) as info:
            policy.check(host, 443, "reward endpoint 'x'")
        messages.add(str(info.value).replace(host, "HOST"))
    assert len(messages) == 1


def test_an_allowlist_admits_hosts_cidrs_and_ports_and_nothing_else() -> None:
    policy = OutboundPolicy(
        ["10.0.0.0/8:50052", "rewards.internal:443", "10.9.9.9:443", "127.0.0.1:*", "[fd00::/8]:7000-7001"],
        resolver=resolver({"rewards.internal": ["10.9.9.9"], "other.internal": ["10.9.9.9"]}),
    )
    assert policy.check("10.1.2.3", 50052, "x")
    assert policy.check("127.0.0.1", 9, "x")
    assert policy.check("rewards.internal", 443, "x") == ["10.9.9.9"]
    assert policy.check("fd00::7", 7001, "x")
    for host, port in [("10.1.2.3", 50053), ("8.8.8.8", 443), ("other.internal", 443), ("fd00::7", 7002)]:
        with pytest.raises(PermissionDenied):
            policy.check(host, port, "x")


def test_a_permitted_name_that_resolves_to_a_forbidden_address_is_refused() -> None:
    """DNS rebinding: the name is allowed, the address it resolves to at connect time is not."""
    table = {"localhost": ["93.184.216.34"]}
    policy = OutboundPolicy(["localhost:*", "public"], resolver=resolver(table))
    assert policy.connect_host("localhost", 8000, "teacher.endpoint") == "93.184.216.34"
    table["localhost"] = ["127.0.0.1"]  # the next resolution points inside
    with pytest.raises(PermissionDenied):
        policy.connect_host("localhost", 8000, "teacher.endpoint")


def test_the_real_localhost_is_refused_when_only_its_name_is_allowed() -> None:
    with pytest.raises(PermissionDenied):
        OutboundPolicy(["localhost:*", "public"]).check("localhost", 8000, "teacher.endpoint")


def test_the_services_own_redis_is_refused_even_when_loopback_is_allowed() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6390/0", endpoint_allowlist=("loopback",))
    policy = OutboundPolicy.from_settings(settings)
    assert policy.check("127.0.0.1", 6391, "x")
    with pytest.raises(PermissionDenied):
        policy.check("127.0.0.1", 6390, "x")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "host:0", "host:9-3", "bad_name!", "[::1"])
def test_a_malformed_allowlist_entry_is_invalid(entry: str) -> None:
    with pytest.raises(InvalidArgument, match="POLICYOPT_ENDPOINT_ALLOWLIST"):
        OutboundPolicy([entry, "public"])


def test_an_allowlist_of_names_only_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no addresses"):
        OutboundPolicy(["rewards.internal:443"])


def test_the_allowlist_and_models_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYOPT_ENDPOINT_ALLOWLIST", "10.0.0.0/8:50052, rewards.internal:443")
    monkeypatch.setenv("POLICYOPT_MODELS", "small=/models/small,hub=hf:org/tiny@main")
    monkeypatch.setenv("POLICYOPT_MODEL_ROOTS", "/models:/data/models")
    settings = load_settings()
    assert settings.endpoint_allowlist == ("10.0.0.0/8:50052", "rewards.internal:443")
    assert settings.models == {"small": "/models/small", "hub": "hf:org/tiny@main"}
    assert settings.model_roots == ("/models", "/data/models")


@pytest.mark.parametrize(
    "url",
    [
        "http://teacher:8000/v1/admin?q=",  # the query would make the service's own path a parameter
        "http://teacher:8000/#",
        "http://user:pw@teacher:8000",
        "http://teacher:8000/../admin",
        "http://teacher:8000/a b",
        "ftp://teacher:8000",
        "http://:8000",
        "http://teacher:99999",
    ],
)
def test_a_teacher_url_must_be_a_plain_base_url(url: str) -> None:
    with pytest.raises(InvalidArgument, match="base URL"):
        parse_base_url(url)


def test_a_teacher_base_url_gives_host_and_default_port() -> None:
    assert parse_base_url("https://teacher.internal/prefix/") == (
        "https://teacher.internal/prefix",
        "teacher.internal",
        443,
    )
    assert parse_base_url("http://10.0.0.7:8000")[1:] == ("10.0.0.7", 8000)
