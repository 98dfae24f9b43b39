"""Connecting to Redis: ``REDIS_URL`` when set, else the embedded Valkey that the launcher started.

An external Redis may need AUTH (``redis://:PASSWORD@host:port/0``, or ``redis://USER:PASSWORD@...``) and
TLS (``rediss://``, verified against ``POLICYOPT_REDIS_CA`` or the system roots). Messages name the URL
without its password.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import parse_qsl, urlsplit

import redis

from policyopt.core.errors import InvalidArgument, Unavailable
from policyopt.core.metrics import redis_error
from policyopt.core.settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``; fails with a message naming the URL when it is unreachable."""
    if not settings.redis_url:
        raise Unavailable(
            "REDIS_URL is unset: start the embedded Valkey with `policyopt up`, or point REDIS_URL at a Redis/Valkey"
        )
    where = redact_url(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, health_check_interval=30, socket_keepalive=True, **tls_options(settings)
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        redis_error("connect")
        raise Unavailable(
            f"Redis at {where} refused the credentials ({exc}); put the right password in REDIS_URL "
            "(redis://:PASSWORD@host:port/0)"
        ) from exc
    except redis.RedisError as exc:
        redis_error("connect")
        raise Unavailable(f"cannot reach Redis at {where}: {exc}") from exc
    info = client.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (6, 2):
        raise Unavailable(f"Redis at {where} is {info.get('redis_version')}; streams need >= 6.2")
    return client


def tls_options(settings: Settings) -> dict[str, str]:
    """``from_url`` options for a ``rediss://`` URL: the CA that signed the Redis's certificate."""
    if settings.redis_ca and not str(settings.redis_url).startswith("rediss://"):
        raise InvalidArgument(
            f"POLICYOPT_REDIS_CA is set but REDIS_URL {redact_url(str(settings.redis_url))} is not rediss://; "
            "use rediss:// for TLS to Redis"
        )
    return {"ssl_ca_certs": settings.redis_ca} if settings.redis_ca else {}


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    query = "&".join(
        f"{name}=***" if name == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def text(value: object) -> str:
    """A Redis reply value (bytes by default) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_entries(reply: object) -> StreamEntries:
    """The entries of an XREAD/XREADGROUP reply ``[[stream, [(id, fields), ...]], ...]``.

    Entries whose fields are empty (deleted while still pending) are skipped.
    """
    out: StreamEntries = []
    for _stream, items in cast(list[tuple[bytes, StreamEntries]], reply or []):
        out.extend((mid, fields) for mid, fields in items if fields)
    return out


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create consumer group ``group`` of ``stream`` (and the stream) unless it exists."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def autoclaim(
    r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
) -> StreamEntries:
    """Up to ``count`` entries of ``group`` idle for ``min_idle_ms``, now held by ``consumer`` (XAUTOCLAIM)."""
    reply = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count)
    # [next_id, entries] on 6.2, [next_id, entries, deleted_ids] on 7+: take the second element only.
    items: StreamEntries = reply[1] if isinstance(reply, list | tuple) and len(reply) >= 2 else []
    return [(mid, fields) for mid, fields in items if fields]
