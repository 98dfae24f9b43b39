"""TLS credentials from PEM files or PEM text, so SDK users need not build them with grpc.

``tls_credentials`` is what ``Client(tls_ca=...)`` and ``AsyncClient(tls_ca=...)`` use; pass its result
as ``credentials=`` to customise further. ``server_credentials`` is what ``RewardServer`` and the
policyopt server serve with. A PEM source is a path (``str`` or ``os.PathLike``), or the PEM text itself
(``bytes``, or a ``str`` that starts with ``-----BEGIN``).
"""

from __future__ import annotations

import os

import grpc

from policyopt.core.errors import InvalidArgument

PemSource = str | bytes | os.PathLike[str]


def read_pem(source: PemSource, what: str) -> bytes:
    """The PEM bytes of ``source``; InvalidArgument naming ``what`` when the file cannot be read."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        with open(source, "rb") as fh:
            pem = fh.read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the TLS {what} {os.fspath(source)!r}: {exc.strerror}") from exc
    if b"-----BEGIN" not in pem:
        raise InvalidArgument(f"the TLS {what} {os.fspath(source)!r} is not PEM (no -----BEGIN line)")
    return pem


def _pair(cert: PemSource | None, key: PemSource | None, whose: str) -> tuple[bytes, bytes] | None:
    if (cert is None) != (key is None):
        raise InvalidArgument(f"give both the {whose} certificate and its key, or neither")
    if cert is None or key is None:
        return None
    return read_pem(key, f"{whose} key"), read_pem(cert, f"{whose} certificate")


def tls_credentials(
    ca: PemSource | None = None, cert: PemSource | None = None, key: PemSource | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials: verify the server with ``ca`` (default: the system roots); ``cert`` and
    ``key`` are a client certificate, for servers that require mutual TLS."""
    root = read_pem(ca, "CA certificate") if ca is not None else None
    pair = _pair(cert, key, "client")
    private_key, chain = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private_key, certificate_chain=chain
    )


def server_credentials(
    cert: PemSource, key: PemSource, client_ca: PemSource | None = None
) -> grpc.ServerCredentials:
    """Server credentials for ``cert``/``key``; with ``client_ca``, callers must present a certificate
    it signed (mutual TLS)."""
    pair = (read_pem(key, "server key"), read_pem(cert, "server certificate"))
    root = read_pem(client_ca, "client CA certificate") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


__all__ = ["PemSource", "read_pem", "server_credentials", "tls_credentials"]
