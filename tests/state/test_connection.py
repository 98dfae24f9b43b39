"""Connecting to Redis: AUTH against a real Valkey that requires a password, ``rediss://`` options, and
messages that name the URL without its password.

The embedded Valkey is built without TLS ("Failed finding TLS support" for ``--tls-port``), so TLS to
Redis is checked up to the handshake: the CA reaches redis-py and a ``rediss://`` URL speaks TLS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from policyopt.core.errors import InvalidArgument, Unavailable
from policyopt.core.settings import Settings
from policyopt.core.valkey import EmbeddedValkey
from policyopt.state import connect
from policyopt.state.connection import redact_url, tls_options

PASSWORD = 'pa ss"word\\'  # a space, a quote and a backslash: the config file and AUTH must carry it as is


@pytest.fixture(scope="module")
def locked_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("locked"), appendonly=False, password=PASSWORD) as server:
        yield server


def url_with(server: EmbeddedValkey, password: str | None) -> str:
    auth = f":{quote(password, safe='')}@" if password is not None else ""
    return f"redis://{auth}{server.host}:{server.port}/0"


def test_the_right_password_connects(locked_valkey: EmbeddedValkey) -> None:
    assert PASSWORD in redis.Redis.from_url(locked_valkey.url).connection_pool.connection_kwargs["password"]
    client = connect(Settings(redis_url=locked_valkey.url))
    assert client.set("po:auth", "ok") and client.get("po:auth") == b"ok"


def test_a_wrong_password_is_unavailable_without_showing_it(locked_valkey: EmbeddedValkey) -> None:
    url = url_with(locked_valkey, "wrong-secret")
    with pytest.raises(Unavailable) as info:
        connect(Settings(redis_url=url))
    message = str(info.value)
    assert "wrong-secret" not in message
    assert f"redis://:***@{locked_valkey.host}:{locked_valkey.port}/0" in message
    assert "refused the credentials" in message and "REDIS_URL" in message


def test_no_password_is_unavailable_and_says_so(locked_valkey: EmbeddedValkey) -> None:
    with pytest.raises(Unavailable, match="refused the credentials"):
        connect(Settings(redis_url=url_with(locked_valkey, None)))


def test_the_password_stays_out_of_the_process_list(locked_valkey: EmbeddedValkey) -> None:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "valkey" in listing and "pa ss" not in listing


def test_an_unreachable_redis_is_named_without_its_password() -> None:
    with pytest.raises(Unavailable) as info:
        connect(Settings(redis_url="redis://:hunter2@127.0.0.1:1/0"))
    assert "hunter2" not in str(info.value) and "redis://:***@127.0.0.1:1/0" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:p%40w@redis.example:6380/1", "rediss://user:***@redis.example:6380/1"),
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://127.0.0.1:6379/0?password=pw&db=2", "redis://127.0.0.1:6379/0?password=***&db=2"),
    ],
)
def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_redis_ca_reaches_redis_py_for_rediss_urls(tmp_path: Path) -> None:
    settings = Settings(redis_url="rediss://:pw@redis.example:6380/0", redis_ca=str(tmp_path / "ca.pem"))
    assert tls_options(settings) == {"ssl_ca_certs": str(tmp_path / "ca.pem")}
    pool = redis.Redis.from_url(settings.redis_url, **tls_options(settings)).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert tls_options(Settings(redis_url="rediss://redis.example:6380/0")) == {}  # system roots


def test_a_redis_ca_with_a_plaintext_url_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not rediss://"):
        tls_options(Settings(redis_url="redis://:pw@127.0.0.1:6379/0", redis_ca="/etc/ca.pem"))


def test_rediss_speaks_tls_so_a_plaintext_valkey_is_unavailable(locked_valkey: EmbeddedValkey) -> None:
    url = url_with(locked_valkey, PASSWORD).replace("redis://", "rediss://", 1)
    with pytest.raises(Unavailable, match="cannot reach Redis at rediss://:\\*\\*\\*@") as info:
        connect(Settings(redis_url=url))
    assert "pa ss" not in str(info.value)
