"""Outbound policy: which reward and teacher endpoints the service's workers may connect to.

A tenant's endpoint address is a request that the service reach into its own network (SSRF), so every
address passes ``OutboundPolicy``, built from ``POLICYOPT_ENDPOINT_ALLOWLIST``::

    entry[,entry...]        entry = HOST[:PORTS]
    HOST    an IPv4 address or CIDR (10.0.0.0/8); an IPv6 one in brackets ([fd00::/8]); a host name
            (rewards.internal) or every name under a domain (*.rewards.internal); or a class:
            public (globally routable), loopback, private (RFC 1918, 100.64/10, fc00::/7), link-local
    PORTS   * | N | N-M; omitted means *

Empty (the default of ``policyopt serve``) means ``public``; ``policyopt up`` and the demo default to
``public,loopback``. An endpoint passes when every address its host resolves to matches an address entry
(IP, CIDR or class) with the port, and, if its host is a name and the list has name entries, the name
matches one of them. Always refused, whatever the list says: port 0, unspecified (0.0.0.0, ::) and
multicast addresses, and the service's own Redis.

The check runs when an endpoint is registered or a run created (``check``) and again before every new
connection (``connect_host``), which returns the checked address to connect to: a name that resolves
elsewhere later (DNS rebinding) is refused, and the connection goes to the address that was checked.
Refusals are PERMISSION_DENIED with one message whatever the reason, so that they tell a tenant nothing
about the service's network; the reason goes to the log.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from policyopt.core.errors import InvalidArgument, PermissionDenied
from policyopt.core.identifiers import quote
from policyopt.core.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
SETTING = "POLICYOPT_ENDPOINT_ALLOWLIST"
DEFAULT_ALLOWLIST = ("public",)
LOCAL_ALLOWLIST = ("public", "loopback")
"""What ``policyopt up`` and the demo allow when the operator sets no list: local reward servers."""

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_CLASSES: dict[str, Callable[[IPAddress], bool]] = {
    "public": lambda ip: ip.is_global,
    "loopback": lambda ip: ip.is_loopback,
    "private": lambda ip: any(ip in net for net in _PRIVATE),
    "link-local": lambda ip: ip.is_link_local,
}
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:]+)\]:([0-9]{1,5})|([A-Za-z0-9.-]+):([0-9]{1,5})")
_NAME = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?$")


def _no_address(_ip: IPAddress) -> bool:
    return False


@dataclass(frozen=True)
class _Rule:
    """One allowlist entry: an address predicate, or (``name`` set) a host name pattern; with a port range."""

    text: str
    low: int
    high: int
    matches_address: Callable[[IPAddress], bool] = _no_address
    name: str = ""

    def allows_port(self, port: int) -> bool:
        return self.low <= port <= self.high


def _parse_ports(text: str, entry: str) -> tuple[int, int]:
    if text in ("", "*"):
        return 1, 65535
    low, _, high = text.partition("-")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise InvalidArgument(f"{SETTING} entry {entry!r}: ports must be *, N or N-M within 1-65535")
    return bounds


def _parse_rule(entry: str) -> _Rule:
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidArgument(
                f"{SETTING} entry {entry!r}: write IPv6 as [addr] or [addr/len], then :PORTS"
            )
        ports = rest[1:]
    else:
        host, _, ports = entry.partition(":")
    low, high = _parse_ports(ports.strip(), entry)
    host = host.strip().lower()
    if host in _CLASSES:
        return _Rule(entry, low, high, matches_address=_CLASSES[host])
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if not _NAME.match(host):
            raise InvalidArgument(
                f"{SETTING} entry {entry!r}: the host must be an IP, a CIDR, a name, *.domain, or one of "
                f"{sorted(_CLASSES)}"
            ) from None
        return _Rule(entry, low, high, name=host)
    return _Rule(entry, low, high, matches_address=lambda ip: ip in network)


def _normalized(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:127.0.0.1) is checked as the IPv4 address it reaches."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), as the system resolver gives them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); InvalidArgument when it is neither.

    The one parser of endpoint addresses: registration checks them with it, and the workers split them with it.
    """
    match = _HOST_PORT.fullmatch(address)
    if not match:
        raise InvalidArgument(
            f"endpoint address {quote(address)} must be host:port, e.g. rewards.internal:50052"
        )
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))


def connect_target(ip: str, port: int) -> str:
    """A gRPC target for one address: ``ip:port``, IPv6 in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_base_url(url: str, what: str = "teacher.endpoint") -> tuple[str, str, int]:
    """(base URL, host, port) of an http(s) base URL the service appends its own paths to.

    A query, a fragment, credentials or a path with anything but plain segments is INVALID_ARGUMENT: the
    service, not the tenant, decides what it requests there.
    """
    hint = f"{what} must be a base URL like http://teacher.internal:8000 (the service appends /v1/...)"
    if any(c in url for c in "?#@\\") or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidArgument(f"{hint}; drop the query, fragment, credentials or spaces in {url[:200]!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise InvalidArgument(f"{hint}; got {url[:200]!r}")
    segments = parts.path.split("/")
    if not _SAFE_PATH.match(parts.path) or ".." in segments or "." in segments:
        raise InvalidArgument(f"{hint}; its path may hold only plain segments, got {parts.path[:200]!r}")
    port = port or (443 if parts.scheme == "https" else 80)
    return url.rstrip("/"), parts.hostname, port


class OutboundPolicy:
    """Decides which host:port the workers may connect to (see the module docstring for the syntax)."""

    def __init__(
        self,
        allowlist: Sequence[str] = (),
        *,
        denied: Sequence[tuple[str, int]] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        entries = [e.strip() for e in (allowlist or DEFAULT_ALLOWLIST) if e.strip()]
        rules = [_parse_rule(e) for e in entries or DEFAULT_ALLOWLIST]
        self._addresses = [r for r in rules if not r.name]
        self._names = [r for r in rules if r.name]
        if not self._addresses:
            raise InvalidArgument(
                f"{SETTING} names hosts but no addresses; add the addresses they resolve to "
                "(e.g. 10.0.0.0/8:443) or 'public'"
            )
        self._resolver = resolver
        self._denied = {(_normalized(ipaddress.ip_address(ip)), port) for ip, port in denied}

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> OutboundPolicy:
        """The policy of ``settings``; the service's own Redis is refused whatever the list says."""
        return cls(settings.endpoint_allowlist, denied=_redis_addresses(settings), resolver=resolver)

    def check(self, host: str, port: int, what: str) -> list[str]:
        """Every address ``host`` resolves to, all allowed with ``port``; PermissionDenied otherwise."""
        reason = self._refusal(host, port)
        if isinstance(reason, str):
            log.warning("outbound policy refused %s %s:%d: %s", what, host, port, reason)
            raise PermissionDenied(
                f"{what} {host[:100]}:{port} is not allowed by the service's outbound policy ({SETTING}): "
                "its host must resolve, and every address it resolves to must be allowed; use an endpoint "
                "the operator allows, or ask them to add it"
            )
        return reason

    def check_address(self, address: str, what: str) -> list[str]:
        host, port = split_host_port(address)
        return self.check(host, port, what)

    def connect_host(self, host: str, port: int, what: str) -> str:
        """The address to connect to for ``host:port``, checked just now."""
        return self.check(host, port, what)[0]

    def _refusal(self, host: str, port: int) -> str | list[str]:
        """Why ``host:port`` is refused, or its resolved addresses when it is allowed."""
        if not 1 <= port <= 65535:
            return f"port {port} is outside 1-65535"
        literal = _literal(host)
        if literal is None and self._names:
            name = host.lower().rstrip(".")
            if not any(r.allows_port(port) and _name_matches(r.name, name) for r in self._names):
                return "the host name matches no name entry"
        try:
            resolved = [literal] if literal is not None else self._resolver(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            return f"it does not resolve ({exc})"
        if not resolved:
            return "it resolves to no address"
        for text in resolved:
            ip = _normalized(ipaddress.ip_address(text))
            if ip.is_unspecified or ip.is_multicast:
                return f"{ip} is unspecified or multicast"
            if (ip, port) in self._denied:
                return f"{ip}:{port} is the service's own Redis"
            if not any(r.allows_port(port) and r.matches_address(ip) for r in self._addresses):
                return f"{ip}:{port} matches no address entry"
        return resolved


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def _redis_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The (ip, port) pairs of the service's Redis, which no endpoint may point at."""
    if not settings.redis_url:
        return []
    parts = urlsplit(settings.redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return []
    port = parts.port or 6379
    try:
        return [(ip, port) for ip in system_resolver(parts.hostname, port)]
    except OSError:
        log.warning("cannot resolve the Redis host %s; the outbound policy cannot exclude it", parts.hostname)
        return []


__all__ = [
    "LOCAL_ALLOWLIST",
    "OutboundPolicy",
    "connect_target",
    "parse_base_url",
    "split_host_port",
    "system_resolver",
]
