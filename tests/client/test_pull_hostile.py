"""``pull_adapter`` writes only under ``dest``, whatever a hostile server sends.

A real grpc server on loopback answers PullAdapter with chosen chunks: run ids, versions and file names
that would escape ``dest`` must raise AdapterIntegrityError and leave nothing outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from policyopt.client import AdapterIntegrityError, Client
from policyopt.v1 import policyopt_pb2 as pb
from policyopt.v1 import policyopt_pb2_grpc as pb_grpc

RUN_ID = "run-0123456789ab"
DATA = b"weights"
SHA = hashlib.sha256(DATA).hexdigest()


class HostileServicer(pb_grpc.PolicyOptimizerServicer):
    """PullAdapter answers with ``self.chunks``, whatever was asked."""

    def __init__(self) -> None:
        self.chunks: list[pb.AdapterChunk] = []

    def PullAdapter(
        self, request: pb.PullAdapterRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AdapterChunk]:
        yield from self.chunks


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[HostileServicer, str]]:
    servicer = HostileServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PolicyOptimizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def _version(
    run_id: str = RUN_ID, version: int = 1, files: dict[str, str] | None = None
) -> pb.AdapterVersion:
    return pb.AdapterVersion(run_id=run_id, version=version, files={"w.bin": SHA} if files is None else files)


def _pull(hostile: tuple[HostileServicer, str], chunks: list[pb.AdapterChunk], dest: Path) -> Path:
    servicer, address = hostile
    servicer.chunks = chunks
    with Client(address, api_key="", timeout=10) as client:
        return client.pull_adapter(RUN_ID, 1, dest)


def _everything_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_a_well_formed_stream_is_written_under_dest(hostile, tmp_path: Path) -> None:
    chunks = [pb.AdapterChunk(manifest=_version(), file_name="w.bin", data=DATA, last=True, sha256=SHA)]
    path = _pull(hostile, chunks, tmp_path / "dest")
    assert path == tmp_path / "dest" / RUN_ID / "v000001"
    assert (path / "w.bin").read_bytes() == DATA


@pytest.mark.parametrize(
    "manifest",
    [
        _version(run_id="../../x"),
        _version(run_id="/tmp/x"),
        _version(run_id="run-0123456789ab/../../x"),
        _version(run_id=""),
        _version(version=-3),  # 0 is a warm-started run's first adapter: a path like any other
        _version(files={"../../x": SHA}),
        _version(files={"/etc/x": SHA}),
        _version(files={"sub/x": SHA}),
        _version(files={"..": SHA}),
        _version(files={"a\x00b": SHA}),
        _version(files={"a\\..\\b": SHA}),
        _version(files={"manifest.json": SHA}),
    ],
    ids=lambda m: f"{m.run_id}|{m.version}|{','.join(m.files)}",
)
def test_a_hostile_manifest_is_refused_and_nothing_is_written_outside_dest(
    hostile, tmp_path: Path, manifest: pb.AdapterVersion
) -> None:
    root = tmp_path / "root"
    dest = root / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    name = next(iter(manifest.files))
    chunks = [pb.AdapterChunk(manifest=manifest, file_name=name, data=DATA, last=True, sha256=SHA)]
    with pytest.raises(AdapterIntegrityError):
        _pull(hostile, chunks, dest)
    outside = [p for p in _everything_under(root) if not (root / p).is_relative_to(dest)]
    assert outside == [Path("a"), Path("a/b")]
    assert not [p for p in dest.rglob("*") if p.is_file()], "a refused pull left files behind"


def test_a_file_name_outside_the_manifest_is_refused(hostile, tmp_path: Path) -> None:
    chunks = [pb.AdapterChunk(manifest=_version(), file_name="../../x", data=DATA, last=True, sha256=SHA)]
    with pytest.raises(AdapterIntegrityError, match="unsafe"):
        _pull(hostile, chunks, tmp_path / "dest")
    assert not (tmp_path / "x").exists()


def test_a_second_manifest_is_refused(hostile, tmp_path: Path) -> None:
    chunks = [
        pb.AdapterChunk(manifest=_version()),
        pb.AdapterChunk(manifest=_version(run_id="run-ffffffffffff")),
    ]
    with pytest.raises(AdapterIntegrityError, match="second manifest"):
        _pull(hostile, chunks, tmp_path / "dest")
    assert not (tmp_path / "dest" / "run-ffffffffffff").exists()


def test_a_run_directory_linked_outside_dest_is_refused(hostile, tmp_path: Path) -> None:
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / RUN_ID).symlink_to(elsewhere)
    chunks = [pb.AdapterChunk(manifest=_version(), file_name="w.bin", data=DATA, last=True, sha256=SHA)]
    with pytest.raises(AdapterIntegrityError, match="outside"):
        _pull(hostile, chunks, dest)
    assert list(elsewhere.iterdir()) == []
