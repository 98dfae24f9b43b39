"""Warm starts and forks: UploadAdapter's files, and CreateRun's ``init_adapter`` as the run's version 0.

An upload is a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``) streamed in chunks,
each file's sha256 checked on its last chunk. It is kept under ``data_dir/uploads/TENANT_KEY/UPLOAD_ID``
(``TENANT_KEY`` is a hash of the tenant, so one tenant cannot name another's upload; ``UPLOAD_ID`` is the
sha256 of the files' names and hashes, so the same adapter uploaded twice is one upload) and
``UPLOAD_ID.json`` beside it holding the base model; the LoRA shape is read from ``adapter_config.json``.

``init_adapter`` is ``upload:UPLOAD_ID`` or ``RUN@vN`` (a version of one of the tenant's runs; another
tenant's run is NOT_FOUND, as GetRun says). The adapter must match the new run's base model, LoRA rank,
alpha and target modules; INVALID_ARGUMENT lists every difference (the request is what must change). The
files are then published as version 0 of the new run with ``parent`` naming the source.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from policyopt.core import identifiers
from policyopt.core.errors import InvalidArgument, NotFound
from policyopt.core.identifiers import quote
from policyopt.core.types import AdapterManifest, Run, RunConfig
from policyopt.state import AdapterStore, RunStore
from policyopt.state.adapter_manifest import ADAPTER_FILES, hash_files

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
_FORK = re.compile(r"^(?P<run>[^@]+)@v(?P<version>[0-9]{1,18})$")


@dataclass(frozen=True)
class UploadChunk:
    """One chunk of UploadAdapter (see ``UploadAdapterChunk`` in the contract)."""

    base_model: str
    file_name: str
    data: bytes
    last: bool
    sha256: str


@dataclass(frozen=True)
class AdapterShape:
    """What must match between an adapter and the run that starts from it."""

    base_model: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)


def _meta_path(upload_dir: Path) -> Path:
    """``UPLOAD_ID.json`` beside the upload's directory (the base model); written last, so it marks a
    complete upload, and outside the directory, so version 0 gets the adapter files alone."""
    return upload_dir.with_name(upload_dir.name + ".json")


def _tenant_dir(root: Path, tenant: str) -> Path:
    return root / hashlib.sha256(tenant.encode()).hexdigest()[:32]


def receive_upload(
    chunks: Iterable[UploadChunk], root: Path, tenant: str, max_bytes: int
) -> tuple[str, AdapterShape]:
    """Write an uploaded adapter's files, check them, and return (upload id, its shape)."""
    base = _tenant_dir(root, tenant)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        base_model = _write_chunks(chunks, tmp, max_bytes)
        shape = _shape(tmp, base_model)
        upload_id = hashlib.sha256(
            "".join(f"{name}:{digest}\n" for name, digest in sorted(shape.files.items())).encode()
        ).hexdigest()
        target = base / upload_id
        if target.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
        _meta_path(target).write_text(json.dumps({"base_model": base_model}), encoding="utf-8")
        return upload_id, shape
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_chunks(chunks: Iterable[UploadChunk], directory: Path, max_bytes: int) -> str:
    """Append each chunk to its file; check names, sizes and each file's sha256. Returns the base model."""
    base_model, total = "", 0
    digests: dict[str, hashlib._Hash] = {}
    done: set[str] = set()
    for chunk in chunks:
        base_model = base_model or chunk.base_model
        name = chunk.file_name
        if name not in ADAPTER_FILES or not identifiers.is_plain_file_name(name):
            raise InvalidArgument(
                f"file_name {quote(name)} is not accepted; upload {list(ADAPTER_FILES)} only"
            )
        if name in done:
            raise InvalidArgument(
                f"{name} was sent twice; send each file once, its last chunk with last=true"
            )
        total += len(chunk.data)
        if total > max_bytes:
            raise InvalidArgument(
                f"the upload is larger than {max_bytes >> 20} MiB (the server's POLICYOPT_MAX_UPLOAD_MB); "
                "upload a LoRA adapter only (no base weights, no optimizer state)"
            )
        digest = digests.setdefault(name, hashlib.sha256())
        digest.update(chunk.data)
        with (directory / name).open("ab") as fh:
            fh.write(chunk.data)
        if chunk.last:
            if chunk.sha256.lower() != digest.hexdigest():
                raise InvalidArgument(f"{name} arrived with sha256 {digest.hexdigest()}, not the {quote(chunk.sha256, 80)} "
                                      "sent with it; upload it again")  # fmt: skip
            done.add(name)
    if not base_model:
        raise InvalidArgument(
            "base_model is empty: set it on the first chunk (the model the adapter was trained on)"
        )
    missing = [n for n in ADAPTER_FILES if n not in done]
    if missing:
        raise InvalidArgument(f"the upload lacks {missing} (or their last chunk, with last=true and sha256)")
    return base_model


def _shape(directory: Path, base_model: str) -> AdapterShape:
    """The LoRA shape of a PEFT directory, from its adapter_config.json."""
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        targets = config["target_modules"]
        targets = (targets,) if isinstance(targets, str) else tuple(sorted(str(t) for t in targets))
        return AdapterShape(base_model, int(config["r"]), float(config.get("lora_alpha", config["r"])),
                            targets, hash_files(directory))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f"adapter_config.json is not a PEFT LoRA config ({type(exc).__name__}: {quote(str(exc), 80)}); "
            "upload the directory save_pretrained wrote"
        ) from exc


@dataclass(frozen=True)
class InitSource:
    """Where version 0 of a new run comes from: a directory of adapter files and the lineage to record."""

    directory: Path
    parent: str
    shape: AdapterShape


def resolve_init_adapter(
    name: str, tenant: str, uploads_root: Path, runs: RunStore, adapters: AdapterStore
) -> InitSource:
    """The adapter ``init_adapter`` names; NotFound when it is not the tenant's."""
    if name.startswith("upload:"):
        upload_id = name.removeprefix("upload:")
        directory = _tenant_dir(uploads_root, tenant) / upload_id
        if not _UPLOAD_ID.match(upload_id) or not _meta_path(directory).is_file():
            raise NotFound(f"init_adapter {quote(name)}: no such upload; upload it with UploadAdapter first")
        meta = json.loads(_meta_path(directory).read_text(encoding="utf-8"))
        return InitSource(directory, f"upload:{upload_id}", _shape(directory, str(meta["base_model"])))
    match = _FORK.match(name)
    if match is None:
        raise InvalidArgument(f"init_adapter {quote(name)} must be 'RUN@vN' (a fork) or 'upload:UPLOAD_ID'")
    parent = runs.get_run(identifiers.run_id(match["run"]), tenant)
    version = int(match["version"])
    known = [m.version for m in runs.list_versions(parent.run_id)]
    if version not in known:
        raise NotFound(
            f"init_adapter {quote(name)}: run {parent.run_id} has no version {version}; versions: {known or 'none yet'}"
        )
    directory = adapters.open_version(parent.run_id, version)
    return InitSource(directory, f"{parent.run_id}@v{version}", _run_shape(parent, hash_files(directory)))


def _run_shape(run: Run, files: dict[str, str]) -> AdapterShape:
    config = run.config
    return AdapterShape(config.base_model, config.lora_rank, float(config.lora_alpha),
                        tuple(sorted(config.lora_target_modules)), files)  # fmt: skip


def check_fits(source: InitSource, config: RunConfig, same_model: Callable[[str, str], bool]) -> None:
    """InvalidArgument naming every difference between ``source`` and the new run's base model and LoRA."""
    wanted = AdapterShape(config.base_model, config.lora_rank, float(config.lora_alpha),
                          tuple(sorted(config.lora_target_modules)))  # fmt: skip
    have = source.shape
    differences = [
        f"{label} is {quote(mine)} here but {quote(theirs)} in the adapter"
        for label, mine, theirs, same in [
            ("base_model", wanted.base_model, have.base_model, same_model(wanted.base_model, have.base_model)),
            ("lora.rank", wanted.rank, have.rank, wanted.rank == have.rank),
            ("lora.alpha", wanted.alpha, have.alpha, wanted.alpha == have.alpha),
            ("lora.target_modules", list(wanted.target_modules), list(have.target_modules),
             wanted.target_modules == have.target_modules),
        ]
        if not same
    ]  # fmt: skip
    if differences:
        raise InvalidArgument(
            f"init_adapter {source.parent} does not fit this run: {'; '.join(differences)}; create the run "
            "with the adapter's base model and LoRA settings"
        )


def publish_version_zero(
    run_id: str, config: RunConfig, source: InitSource, adapters: AdapterStore
) -> AdapterManifest:
    """Publish ``source``'s files as version 0 of the run about to be created as ``run_id``; its manifest
    goes into the run's index in ``RunStore.create_run``'s MULTI (files without a run are inert)."""
    manifest = AdapterManifest(
        run_id=run_id,
        version=0,
        step=0,
        base_model=config.base_model,
        method=config.method.preset,
        resolved_method=config.resolved_method,
        parent=source.parent,
    )
    return adapters.publish(run_id, 0, source.directory, manifest)


__all__ = [
    "AdapterShape",
    "InitSource",
    "UploadChunk",
    "check_fits",
    "publish_version_zero",
    "receive_upload",
    "resolve_init_adapter",
]
