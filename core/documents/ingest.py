"""The ingestion pipeline: parse → chunk → embed → store, one transaction per document.

Files are parsed and chunked one at a time, but embedded together: the chunks of several
files (about `settings.embed_group_chunks` of them) go through the embedding model in one
length-sorted pass, because one small batch per file left most of each batch as padding and
made ingestion 1.4× slower than embedding alone (docs/benchmarks.md). Each file is then
stored in its own transaction, so a file that fails leaves no trace (no document row, no
chunks) and the other files of the same upload go on. Progress is reported per file and stage
so a page can draw a bar per file.

Files come from outside: a file on disk is refused by its size before it is read, and every file
is parsed in a child process with a time and a memory limit (core/documents/sandbox.py), so a
hostile one costs at most those limits and a message naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.config import Settings, get_settings
from core.db import Database
from core.documents.chunking import ChunkDraft, chunk_document
from core.documents.embeddings import Embedder, EmbeddingModelError, load_embedder
from core.documents.errors import IngestError
from core.documents.library import CollectionInfo, LibraryError, get_collection
from core.documents.parsing import ParsedDocument, display_name, file_type_of, safe_filename
from core.documents.sandbox import parse_untrusted
from core.documents.search import copy_chunks

Status = Literal["added", "replaced", "skipped", "failed"]
Stage = Literal["parse", "chunk", "embed", "store", "done"]
ProgressCallback = Callable[[Stage, float], None]
# Progress of several files: the position of the file in the input, its stage, the fraction done.
FileProgressCallback = Callable[[int, Stage, float], None]
# A file to ingest: its name and its bytes, a function that reads them when their turn comes, or
# its path on disk (its size is checked with stat() before it is read).
FileInput = tuple[str, "bytes | Callable[[], bytes] | Path"]

logger = logging.getLogger(__name__)

# Share of the progress bar each stage ends at (embedding is where the time goes).
_STAGE_END = {"parse": 0.1, "chunk": 0.15, "embed": 0.9, "store": 1.0}


@dataclass(frozen=True)
class IngestOutcome:
    filename: str
    status: Status
    message: str
    document_id: int | None = None
    chunks: int = 0
    pages: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class _Prepared:
    """A file parsed and chunked, waiting for its group to be embedded and stored."""

    index: int
    filename: str
    data_size: int
    sha256: str
    same_name: list[int]
    parsed: ParsedDocument
    chunks: list[ChunkDraft]
    embedding_model: str
    started: float
    vectors: np.ndarray | None = None


def ingest_files(
    db: Database,
    collection: str,
    files: Iterable[FileInput],
    *,
    replace: bool = False,
    progress: FileProgressCallback | None = None,
    settings: Settings | None = None,
) -> list[IngestOutcome]:
    """Add files to `collection`; one outcome per file, in order. Never raises for bad input."""
    settings = settings or get_settings()
    report = _guarded(progress)
    outcomes: dict[int, IngestOutcome] = {}
    group: list[_Prepared] = []

    def flush() -> None:
        for position, outcome in _embed_and_store(db, collection, group, replace, report, settings):
            outcomes[position] = outcome
        group.clear()

    def prepare(index: int, name: str, data) -> _Prepared | IngestOutcome:
        try:
            return _prepare(db, collection, name, data, replace, lambda s, f: report(index, s, f), settings)
        except Exception as error:
            return _failure(name, error)

    for index, (filename, data) in enumerate(files):
        started = time.perf_counter()
        try:
            name = safe_filename(filename)
        except IngestError as error:
            prepared: _Prepared | IngestOutcome = _failure(display_name(filename) or "(no name)", error)
        else:
            if any(p.filename == name for p in group):
                flush()  # the same name twice in one upload: store the first before checking the second
            prepared = prepare(index, name, data)
            # Decisions that depend on files still waiting in the group (the same content twice in one
            # upload; a skip next to a file that replaces documents) are taken again once they are stored.
            if (isinstance(prepared, _Prepared) and any(p.sha256 == prepared.sha256 for p in group)) or (
                isinstance(prepared, IngestOutcome) and prepared.status == "skipped" and any(p.same_name for p in group)
            ):
                flush()
                prepared = prepare(index, name, data)
        if isinstance(prepared, IngestOutcome):
            report(index, "done", 1.0)
            outcomes[index] = dataclasses.replace(prepared, seconds=time.perf_counter() - started)
            continue
        prepared.index, prepared.started = index, started
        group.append(prepared)
        if sum(len(p.chunks) for p in group) >= settings.embed_group_chunks:
            flush()
    flush()
    return [outcomes[index] for index in sorted(outcomes)]


def ingest_bytes(
    db: Database,
    collection: str,
    filename: str,
    data: bytes,
    *,
    replace: bool = False,
    progress: ProgressCallback | None = None,
    settings: Settings | None = None,
) -> IngestOutcome:
    """Add one file to `collection`. Never raises for bad input: the outcome says what happened."""
    callback = (lambda position, stage, fraction: progress(stage, fraction)) if progress else None
    return ingest_files(db, collection, [(filename, data)], replace=replace, progress=callback, settings=settings)[0]


def ingest_paths(
    db: Database,
    collection: str,
    paths: Iterable[Path],
    *,
    replace: bool = False,
    progress: FileProgressCallback | None = None,
    settings: Settings | None = None,
) -> list[IngestOutcome]:
    """Ingest files (folders are walked for supported types); one outcome per file, in order."""
    return ingest_files(
        db,
        collection,
        ((path.name, path) for path in _expand(paths)),
        replace=replace,
        progress=progress,
        settings=settings,
    )


def _prepare(
    db: Database,
    collection_name: str,
    filename: str,
    data: bytes | Callable[[], bytes] | Path,
    replace: bool,
    report: ProgressCallback,
    settings: Settings,
) -> _Prepared | IngestOutcome:
    """Check, parse and chunk one file; an outcome instead when it is skipped."""
    file_type_of(filename)  # unsupported types fail before any work
    limit = int(settings.max_upload_mb * 1024 * 1024)
    if isinstance(data, Path):
        data = _read_path(filename, data, limit, settings)
    elif callable(data):
        data = _read(filename, data)
    if len(data) > limit:
        raise _too_large(filename, len(data), settings)
    collection = get_collection(db, collection_name)
    sha256 = hashlib.sha256(data).hexdigest()
    with db.engine.connect() as connection:
        duplicate = connection.execute(
            text("SELECT filename FROM documents WHERE collection_id = :c AND sha256 = :sha256"),
            {"c": collection.id, "sha256": sha256},
        ).scalar()
        same_name = list(
            connection.execute(
                text("SELECT id FROM documents WHERE collection_id = :c AND filename = :f"), {"c": collection.id, "f": filename}
            ).scalars()
        )
    if duplicate is not None:
        return IngestOutcome(
            filename, "skipped", f"{filename}: already in {collection_name!r} (same content as {duplicate!r}); skipped."
        )
    if same_name and not replace:
        return IngestOutcome(
            filename,
            "skipped",
            f"{filename}: a different version is already in {collection_name!r}; skipped. "
            "Tick 'Replace documents with the same name' (CLI: --replace) to replace it.",
        )

    report("parse", 0.0)
    parsed = parse_untrusted(filename, data, settings)  # in a child process, with time and memory limits
    report("chunk", _STAGE_END["parse"])
    embedder = load_embedder(collection.embedding_model)
    chunks = chunk_document(parsed, embedder.tokenizer, collection.chunk_tokens, collection.chunk_overlap)
    report("embed", _STAGE_END["chunk"])
    return _Prepared(0, filename, len(data), sha256, same_name, parsed, chunks, collection.embedding_model, 0.0)


def _guarded(progress: FileProgressCallback | None) -> FileProgressCallback:
    """A progress callback whose errors are logged, not raised: a broken progress bar must not fail
    or half-record an upload. (Streamlit's stop and rerun are BaseExceptions and still go through.)"""

    def report(position: int, stage: Stage, fraction: float) -> None:
        if progress is None:
            return
        try:
            progress(position, stage, fraction)
        except Exception:
            logger.warning("Ingestion progress callback failed", exc_info=True)

    return report


def _too_large(filename: str, size: int, settings: Settings) -> IngestError:
    return IngestError(
        filename,
        f"is {size / 1024 / 1024:.1f} MB, over the {settings.max_upload_mb:g} MB limit.",
        "Split it into smaller files, or raise EXPERT_STUDIO_MAX_UPLOAD_MB.",
    )


def _read_path(filename: str, path: Path, limit: int, settings: Settings) -> bytes:
    """A file's bytes, refused by its size on disk before any byte is read (and read no further
    than the limit, should it grow meanwhile)."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise _too_large(filename, size, settings)
        with path.open("rb") as file:
            data = file.read(limit + 1)
            if len(data) > limit:
                raise _too_large(filename, os.fstat(file.fileno()).st_size, settings)
    except OSError as error:
        raise IngestError(
            filename, f"cannot be read ({error.strerror or error}).", "Check the file and its permissions."
        ) from error
    return data


def _read(filename: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except OSError as error:
        raise IngestError(
            filename, f"cannot be read ({error.strerror or error}).", "Check the file and its permissions."
        ) from error


def _embed_and_store(
    db: Database, collection_name: str, group: list[_Prepared], replace: bool, report: FileProgressCallback, settings: Settings
) -> Iterator[tuple[int, IngestOutcome]]:
    """Embed the group's chunks in one pass, then store each file in its own transaction."""
    if not group:
        return
    try:
        collection = get_collection(db, collection_name)
        embedder = load_embedder(collection.embedding_model)
        if collection.embedding_dim and embedder.dim != collection.embedding_dim:  # e.g. an API server now serving another model
            raise LibraryError(f"{collection.embedding_model} now gives {embedder.dim}-dimensional vectors; collection "
                               f"{collection.name!r} holds {collection.embedding_dim}. Serve the collection's model again, "
                               "or re-embed the collection.")
    except Exception as error:  # no collection or no model: every file of the group fails with the reason
        for prepared in group:
            report(prepared.index, "done", 1.0)
            yield prepared.index, _timed(_failure(prepared.filename, error), prepared)
        return
    try:
        _embed_group(embedder, group, settings.embed_batch_size, report)
        embedded = group
    except Exception:  # one file's text may be what breaks the model: embed file by file, fail only those
        embedded = []
        for prepared in group:
            try:
                _embed_group(embedder, [prepared], settings.embed_batch_size, report)
                embedded.append(prepared)
            except Exception as error:
                report(prepared.index, "done", 1.0)
                yield prepared.index, _timed(_failure(prepared.filename, error), prepared)
    for prepared in embedded:
        report(prepared.index, "store", _STAGE_END["embed"])
        try:
            outcome = _store_with_current_model(db, collection, prepared, replace, report, settings)
        except Exception as error:
            outcome = _failure(prepared.filename, error)
        report(prepared.index, "done", 1.0)
        yield prepared.index, _timed(outcome, prepared)


def _embed_group(embedder: Embedder, group: list[_Prepared], batch_size: int, report: FileProgressCallback) -> None:
    """One embedding pass over every chunk of the group, with progress per file.

    The texts are sorted by their token count and embedded one batch at a time, so each batch holds
    texts of nearly the same length and little of it is padding (sentence-transformers sorts by
    characters, which wastes about a fifth of the tokens on padding for typical chunks)."""
    chunks = [chunk for prepared in group for chunk in prepared.chunks]
    texts = [chunk.text_for_embedding for chunk in chunks]
    # Chunking counted each text's tokens; only the headings put in front of them are counted here.
    headings = list({chunk.heading for chunk in chunks if chunk.heading})
    heading_tokens = dict(zip(headings, embedder.count_tokens(headings), strict=True))
    lengths = [chunk.token_count + heading_tokens.get(chunk.heading, 0) for chunk in chunks]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    batch_size = max(batch_size, 1)
    start, end = _STAGE_END["chunk"], _STAGE_END["embed"]
    shown = 0.0
    for offset in range(0, len(order), batch_size):
        positions = order[offset : offset + batch_size]
        vectors[positions] = embedder.embed([texts[i] for i in positions], batch_size=batch_size)
        done = min(1.0, (offset + batch_size) / len(order))
        if done - shown >= 0.2 or done == 1.0:  # a few updates per group, not one per batch and file
            shown = done
            for prepared in group:
                report(prepared.index, "embed", start + (end - start) * done)
    offset = 0
    for prepared in group:
        prepared.vectors = vectors[offset : offset + len(prepared.chunks)]
        offset += len(prepared.chunks)


# How often a file is embedded again because the collection switched models meanwhile, before giving up.
_STORE_ATTEMPTS = 3


class _ModelChanged(Exception):
    """The collection was re-embedded after the file's chunks were embedded; nothing was stored."""

    def __init__(self, model: str):
        self.model = model


def _store_with_current_model(
    db: Database, collection: CollectionInfo, prepared: _Prepared, replace: bool, report: FileProgressCallback,
    settings: Settings,
) -> IngestOutcome:
    """Store the file with vectors of the model the collection has when its transaction commits.

    A re-embed that switched the model after this file was embedded would leave it with vectors of
    the old model (a silent mix, or a dimension that search cannot compare). Then the file is chunked
    and embedded again with the new model, outside any lock, and stored: the upload succeeds as if
    it had started after the switch, instead of failing and asking the user to add it again."""
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        try:
            return _store(db, collection, prepared, replace)
        except _ModelChanged as changed:
            if attempt == _STORE_ATTEMPTS:
                break
            embedder = load_embedder(changed.model)
            prepared.chunks = chunk_document(prepared.parsed, embedder.tokenizer, collection.chunk_tokens,
                                             collection.chunk_overlap)
            prepared.embedding_model = changed.model
            _embed_group(embedder, [prepared], settings.embed_batch_size, report)
            report(prepared.index, "store", _STAGE_END["embed"])
    raise IngestError(
        prepared.filename,
        f"could not be stored: {collection.name!r} switched embedding models {_STORE_ATTEMPTS} times while it was "
        "being added; nothing was stored.",
        "Add the file again once the collection's re-embedding is done.",
    )


def _store(db: Database, collection: CollectionInfo, prepared: _Prepared, replace: bool) -> IngestOutcome:
    """Write the document and its chunks in one transaction, or raise _ModelChanged and write nothing."""
    filename, parsed, chunks = prepared.filename, prepared.parsed, prepared.chunks
    try:
        with db.engine.begin() as connection:
            # A share lock on the collection row until commit: the model read here is the one the chunks are
            # stored under. A re-embed switches the model under a stronger lock on this row, so it waits for
            # this transaction (and then re-embeds these chunks too), or this one waits for it (and sees the
            # new model). Concurrent uploads share the lock.
            model = connection.execute(
                text("SELECT embedding_model FROM collections WHERE id = :c FOR SHARE"), {"c": collection.id}
            ).scalar()
            if model is None:
                raise IngestError(filename, f"was not stored: the collection {collection.name!r} was deleted meanwhile.")
            if model != prepared.embedding_model:
                raise _ModelChanged(model)
            if replace and prepared.same_name:
                connection.execute(text("DELETE FROM documents WHERE id = ANY(:ids)"), {"ids": prepared.same_name})
            document_id = connection.execute(
                text(
                    """
                    INSERT INTO documents (collection_id, filename, file_type, sha256, size_bytes, pages, chunk_count, token_count)
                    VALUES (:collection_id, :filename, :file_type, :sha256, :size_bytes, :pages, :chunk_count, :token_count)
                    RETURNING id
                    """
                ),
                {
                    "collection_id": collection.id,
                    "filename": filename,
                    "file_type": parsed.file_type,
                    "sha256": prepared.sha256,
                    "size_bytes": prepared.data_size,
                    "pages": parsed.pages,
                    "chunk_count": len(chunks),
                    "token_count": sum(chunk.token_count for chunk in chunks),
                },
            ).scalar_one()
            copy_chunks(connection, document_id, collection.id, chunks, prepared.vectors)
    except IntegrityError:  # the same content landed from another upload meanwhile
        return IngestOutcome(filename, "skipped", f"{filename}: already in {collection.name!r}; skipped.")

    status: Status = "replaced" if replace and prepared.same_name else "added"
    where = f", {parsed.pages} pages" if parsed.pages else ""
    return IngestOutcome(
        filename,
        status,
        f"{filename}: {status}, {len(chunks)} chunk{'s' if len(chunks) != 1 else ''}{where}.",
        document_id=document_id,
        chunks=len(chunks),
        pages=parsed.pages,
    )


def _failure(filename: str, error: Exception) -> IngestOutcome:
    if isinstance(error, IngestError | LibraryError | EmbeddingModelError):
        return IngestOutcome(filename, "failed", str(error))
    # An unexpected failure still must not stop the other files.
    return IngestOutcome(filename, "failed", f"{filename}: could not be added ({type(error).__name__}: {error}).")


def _timed(outcome: IngestOutcome, prepared: _Prepared) -> IngestOutcome:
    return dataclasses.replace(outcome, seconds=time.perf_counter() - prepared.started)


def _expand(paths: Iterable[Path]) -> list[Path]:
    from core.documents.parsing import SUPPORTED_TYPES

    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_TYPES))
        else:
            files.append(path)
    return files
