"""A version directory as a streamed ``.tar.gz``: header, file bytes in chunks, never the whole file in memory."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 16
_BLOCK = tarfile.BLOCKSIZE


def tar_gz_chunks(directory: Path, names: list[str], prefix: str) -> Iterator[bytes]:
    """gzip-compressed ustar bytes of ``directory/name`` for each name, stored as ``prefix/name``."""
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    for name in names:
        path = directory / name
        stat = path.stat()
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield gzip.compress(info.tobuf(format=tarfile.USTAR_FORMAT))
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield gzip.compress(chunk)
        yield gzip.compress(b"\0" * (-stat.st_size % _BLOCK))
    yield gzip.compress(b"\0" * (2 * _BLOCK)) + gzip.flush()


__all__ = ["tar_gz_chunks"]
