"""Connecting to Redis: ``REDIS_URL`` when set, else the embedded Valkey that the launcher started."""

from __future__ import annotations

from typing import cast

import redis

from policyopt.core.errors import Unavailable
from policyopt.core.settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``; fails with a message naming the URL when it is unreachable."""
    if not settings.redis_url:
        raise Unavailable(
            "REDIS_URL is unset: start the embedded Valkey with `policyopt up`, or point REDIS_URL at a Redis/Valkey"
        )
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"cannot reach Redis at {settings.redis_url}: {exc}") from exc
    info = client.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (6, 2):
        raise Unavailable(
            f"Redis at {settings.redis_url} is {info.get('redis_version')}; streams need >= 6.2"
        )
    return client


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
