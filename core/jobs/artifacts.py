"""Folders stored in Postgres as artifacts (finished adapters, training checkpoints), so that every
machine with the same DATABASE_URL sees the same files while keeping its own data folder.

A folder is packed as an uncompressed tar in a fixed order with fixed times, owners and modes, so
the same files always give the same bytes and the same sha256. The tar is stored once per hash
(`artifact_blobs`), cut into parts of at most 8 MiB (`artifact_blob_parts`) so that no single value
is huge and reading streams part by part; `artifacts` gives a blob a kind and a name.

Reading goes through a local cache, `<cache root>/<sha256>/`: the folder name is the content
hash, so a cached folder never goes stale (an artifact published again under the same name has a
new hash, hence a new folder) and a present one is used without reading the blob again. Folders
appear in the cache, and restored checkpoints in their place, only by an atomic rename of a
complete staging folder beside them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy import Connection, text

from core.config import Settings, get_settings
from core.db import Database
from core.errors import UserError

KINDS = ("adapter", "checkpoint")  # the migration's CHECK lists the same
PART_BYTES = 8 * 2**20  # the largest bytea value one part holds (the migration checks it too)
_COPY_BYTES = 2**20


class ArtifactError(UserError):
    """An artifact that does not exist, already exists, or cannot be stored or restored safely."""


@dataclass(frozen=True)
class ArtifactInfo:
    id: int
    kind: str
    name: str
    sha256: str
    size_bytes: int
    job_id: int | None
    base_model: str | None
    metadata: dict = field(default_factory=dict)
    created_at: datetime | None = None


def artifact_cache_dir(settings: Settings | None = None) -> Path:
    """This machine's cache of artifact folders: `<data dir>/cache/artifacts` (each machine has its own)."""
    return (settings or get_settings()).data_dir.resolve() / "cache" / "artifacts"


# --- packing ----------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """Write-through to a file while hashing and counting: the tar's sha256 without a second read."""

    def __init__(self, target: BinaryIO):
        self.target, self.digest, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.target.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _entries(folder: Path) -> list[tuple[str, Path]]:
    """Every folder and file below `folder` by relative POSIX path, sorted: the tar's fixed order."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() and not path.is_file():
                raise ArtifactError(f"{path} is a link to a folder or to nothing; only plain files can be stored.")
            found.append((relative, path))
    return sorted(found)


def pack_folder(folder: Path, target: BinaryIO) -> tuple[str, int]:
    """Write `folder` as a deterministic uncompressed tar to `target`; return (sha256, size).

    Times, owners and modes are fixed (files 0644, folders 0755) and entries sorted, so the hash
    depends on names and contents only: republishing unchanged files stores nothing new."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder.")
    writer = _HashingWriter(target)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as archive:
        for relative, path in _entries(folder):
            info = tarfile.TarInfo(relative)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir() and not path.is_symlink():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:  # a plain file, or a link to one: stored as the file it points to
                info.mode, info.size = 0o644, path.stat().st_size
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
    return writer.digest.hexdigest(), writer.size


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)


def folder_sha256(folder: Path) -> str:
    """The sha256 the folder would be stored under (packs it without keeping the bytes)."""
    return pack_folder(Path(folder), _Discard())[0]


# --- unpacking --------------------------------------------------------------------------------


def _safe_member_path(root: Path, member: tarfile.TarInfo) -> Path:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not name.parts or "\\" in member.name:
        raise ArtifactError(f"Refused an unsafe path in an artifact: {member.name!r}.")
    if not (member.isfile() or member.isdir()):
        raise ArtifactError(f"Refused {member.name!r} in an artifact: only plain files and folders are restored, not links.")
    target = root.joinpath(*name.parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"Refused an unsafe path in an artifact: {member.name!r}.")
    return target


def unpack_tar(stream: BinaryIO, root: Path) -> None:
    """Extract a tar stream into the existing folder `root`, refusing absolute paths, `..` and links
    (an artifact comes from another machine: it must not write outside its folder)."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            target = _safe_member_path(root, member)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            with target.open("wb") as handle:
                shutil.copyfileobj(source, handle, _COPY_BYTES)


class _BlobReader(io.RawIOBase):
    """Read a stored blob part by part (one 8 MiB value in memory at a time), checking its hash."""

    def __init__(self, connection: Connection, sha256: str, size: int):
        self.connection, self.sha256, self.size = connection, sha256, size
        self.part, self.buffer, self.offset, self.read_bytes = 0, b"", 0, 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def _next_part(self) -> bytes:
        data = self.connection.execute(
            text("SELECT data FROM artifact_blob_parts WHERE sha256 = :s AND part = :p"), {"s": self.sha256, "p": self.part}
        ).scalar()
        if data is None:
            return b""
        self.part += 1
        data = bytes(data)
        self.digest.update(data)
        self.read_bytes += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        if self.offset >= len(self.buffer):
            self.buffer, self.offset = self._next_part(), 0
        end = len(self.buffer) if size is None or size < 0 else self.offset + size
        chunk = self.buffer[self.offset:end]
        self.offset += len(chunk)
        return chunk

    def readinto(self, target) -> int:
        chunk = self.read(len(target))
        target[: len(chunk)] = chunk
        return len(chunk)

    def verify(self) -> None:
        """Read what the tar reader left (its end padding) and compare size and hash with the blob's."""
        while self.read(PART_BYTES):
            pass
        if self.read_bytes != self.size or self.digest.hexdigest() != self.sha256:
            raise ArtifactError(f"The stored blob {self.sha256[:12]} is incomplete or damaged "
                                f"({self.read_bytes:,} of {self.size:,} bytes); publish the artifact again.")


# --- rows -------------------------------------------------------------------------------------

_COLUMNS = "id, kind, name, sha256, size_bytes, job_id, base_model, metadata, created_at"


def _info(row) -> ArtifactInfo:
    return ArtifactInfo(id=row.id, kind=row.kind, name=row.name, sha256=row.sha256, size_bytes=row.size_bytes,
                        job_id=row.job_id, base_model=row.base_model, metadata=row.metadata or {}, created_at=row.created_at)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ArtifactError(f"Unknown artifact kind {kind!r}; use one of: {', '.join(KINDS)}.")


def list_artifacts(db: Database, kind: str) -> list[ArtifactInfo]:
    _check_kind(kind)
    with db.engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {_COLUMNS} FROM artifacts WHERE kind = :k ORDER BY name"), {"k": kind})
        return [_info(row) for row in rows]


def get_artifact(db: Database, kind: str, name: str) -> ArtifactInfo | None:
    """The artifact's row (no file is read), or None when there is none of that kind and name."""
    _check_kind(kind)
    with db.engine.connect() as connection:
        row = connection.execute(text(f"SELECT {_COLUMNS} FROM artifacts WHERE kind = :k AND name = :n"),
                                 {"k": kind, "n": name}).first()
    return _info(row) if row else None


def _drop_unreferenced_blobs(connection: Connection, hashes: list[str]) -> None:
    """Delete these blobs (their parts cascade) unless an artifact still uses them: same transaction
    as the change that released them, so a replaced checkpoint never leaves its bytes behind."""
    if hashes:
        connection.execute(
            text("DELETE FROM artifact_blobs b WHERE b.sha256 = ANY(:h) "
                 "AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256)"),
            {"h": hashes},
        )


def publish_folder(db: Database, *, kind: str, name: str, folder: Path, job_id: int | None = None,
                   base_model: str | None = None, metadata: dict | None = None, replace: bool = False,
                   cache_root: Path | None = None) -> ArtifactInfo:
    """Store `folder` as the artifact `kind`/`name`, in one transaction: readers see the old
    artifact or the new one, never a part of it. A name that exists is refused unless `replace`;
    a replaced blob that nothing else uses is deleted in the same transaction.

    With `cache_root`, the published files are also placed in this machine's cache, so the machine
    that made them does not read them back from the database."""
    _check_kind(kind)
    name = (name or "").strip()
    if not name:
        raise ArtifactError("An artifact needs a name.")
    with tempfile.TemporaryFile(prefix="artifact-") as packed:
        sha256, size = pack_folder(Path(folder), packed)
        with db.engine.begin() as connection:
            previous = connection.execute(
                text("SELECT sha256 FROM artifacts WHERE kind = :k AND name = :n FOR UPDATE"), {"k": kind, "n": name}
            ).scalar()
            if previous is not None and not replace:
                raise ArtifactError(f"{kind.capitalize()} {name!r} already exists; choose another name or delete it first.")
            created = connection.execute(
                text("INSERT INTO artifact_blobs (sha256, size_bytes) VALUES (:s, :b) ON CONFLICT (sha256) DO NOTHING "
                     "RETURNING sha256"),
                {"s": sha256, "b": size},
            ).scalar()
            if created:  # new content: stream it in parts (an existing blob is shared, not stored twice)
                packed.seek(0)
                part = 0
                while data := packed.read(PART_BYTES):
                    connection.execute(text("INSERT INTO artifact_blob_parts (sha256, part, data) VALUES (:s, :p, :d)"),
                                       {"s": sha256, "p": part, "d": data})
                    part += 1
            values = {"k": kind, "n": name, "s": sha256, "b": size, "j": job_id, "m": base_model,
                      "meta": json.dumps(metadata or {})}
            row = connection.execute(
                text("INSERT INTO artifacts (kind, name, sha256, size_bytes, job_id, base_model, metadata) "
                     "VALUES (:k, :n, :s, :b, :j, :m, CAST(:meta AS jsonb)) "
                     + ("ON CONFLICT (kind, name) DO UPDATE SET sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes, "
                        "job_id = EXCLUDED.job_id, base_model = EXCLUDED.base_model, metadata = EXCLUDED.metadata, "
                        "created_at = now() " if replace else "ON CONFLICT (kind, name) DO NOTHING ")
                     + f"RETURNING {_COLUMNS}"),
                values,
            ).first()
            if row is None:  # another process published this name since the check above
                raise ArtifactError(f"{kind.capitalize()} {name!r} already exists; choose another name or delete it first.")
            if previous is not None and previous != sha256:
                _drop_unreferenced_blobs(connection, [previous])
        if cache_root is not None and not (Path(cache_root) / sha256).is_dir():
            packed.seek(0)
            _place_in_cache(Path(cache_root), sha256, lambda staging: unpack_tar(packed, staging))
    return _info(row)


def delete_artifact(db: Database, kind: str, name: str) -> ArtifactInfo:
    """Remove the artifact, and its blob when no other artifact shares it. Cached copies stay:
    they are keyed by content and harmless (see `prune_cache`)."""
    _check_kind(kind)
    with db.engine.begin() as connection:
        row = connection.execute(text(f"DELETE FROM artifacts WHERE kind = :k AND name = :n RETURNING {_COLUMNS}"),
                                 {"k": kind, "n": name}).first()
        if row is None:
            raise ArtifactError(f"No {kind} named {name!r}.")
        _drop_unreferenced_blobs(connection, [row.sha256])
    return _info(row)


# --- reading ----------------------------------------------------------------------------------


def _extract(db: Database, kind: str, name: str, staging: Path, expect_sha256: str | None = None) -> ArtifactInfo:
    """Read the artifact's row and its blob from one snapshot (a concurrent replace cannot mix two
    versions) and unpack it into `staging`."""
    with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection, connection.begin():
        row = connection.execute(text(f"SELECT {_COLUMNS} FROM artifacts WHERE kind = :k AND name = :n"),
                                 {"k": kind, "n": name}).first()
        if row is None:
            raise ArtifactError(f"No {kind} named {name!r}.")
        if expect_sha256 is not None and row.sha256 != expect_sha256:
            raise _Replaced(_info(row))
        reader = _BlobReader(connection, row.sha256, row.size_bytes)
        try:
            unpack_tar(reader, staging)
        except tarfile.TarError as error:
            reader.verify()  # missing or changed bytes explain it best
            raise ArtifactError(f"The stored {kind} {name!r} is not a readable archive: {error}") from error
        reader.verify()
    return _info(row)


class _Replaced(Exception):
    """The artifact changed between reading its row and its blob: try again with the new one."""

    def __init__(self, info: ArtifactInfo):
        self.info = info


def _place_in_cache(cache_root: Path, sha256: str, fill) -> Path:
    """Fill a staging folder beside `<cache_root>/<sha256>` and rename it into place; a folder that
    another process placed meanwhile wins (same hash, same files)."""
    target = cache_root / sha256
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{sha256[:12]}-", dir=cache_root))
    try:
        fill(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch_folder(db: Database, kind: str, name: str, cache_root: Path) -> Path:
    """The artifact's files as a local folder, `<cache_root>/<sha256>/`: read from the database only
    when this machine has not cached that content yet. Treat the folder as read-only: it is shared
    by everything that uses the same content."""
    cache_root = Path(cache_root)
    info = get_artifact(db, kind, name)
    for _attempt in range(3):
        if info is None:
            raise ArtifactError(f"No {kind} named {name!r}.")
        if (cache_root / info.sha256).is_dir():
            return cache_root / info.sha256
        try:
            return _place_in_cache(cache_root, info.sha256,
                                   lambda staging, sha=info.sha256: _extract(db, kind, name, staging, expect_sha256=sha))
        except _Replaced as replaced:
            info = replaced.info
    raise ArtifactError(f"The {kind} {name!r} keeps changing while it is read; try again.")


def restore_folder(db: Database, kind: str, name: str, parent: Path,
                   folder_name: Callable[[ArtifactInfo], str]) -> tuple[Path, ArtifactInfo]:
    """Unpack the artifact into `parent / folder_name(info)` through a staging folder and a rename
    (outside the cache: a restored checkpoint is written to by whoever resumes from it). An
    existing target is replaced."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restoring-", dir=parent))
    try:
        info = _extract(db, kind, name, staging)
        target = parent / folder_name(info)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, info


def prune_cache(db: Database, cache_root: Path) -> list[str]:
    """Remove cached folders whose content no artifact uses any more (deleted or replaced ones)."""
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        return []
    with db.engine.connect() as connection:
        used = set(connection.execute(text("SELECT DISTINCT sha256 FROM artifacts")).scalars())
    removed = []
    for folder in cache_root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in used:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
