"""The ingestion pipeline: parse → chunk → embed → store, one transaction per document.

A file that fails leaves no trace (no document row, no chunks); the other files of the same
upload go on. Progress is reported per stage so a page can draw a bar per file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.db import Database
from core.db.tables import Collection, Document
from core.documents.chunking import chunk_document
from core.documents.errors import IngestError
from core.documents.parsing import file_type_of, parse_document, safe_filename
from core.embeddings import EmbeddingModelError, load_embedder
from core.library import LibraryError, get_collection
from core.store import copy_chunks

Status = Literal["added", "replaced", "skipped", "failed"]
Stage = Literal["parse", "chunk", "embed", "store", "done"]
ProgressCallback = Callable[[Stage, float], None]

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
    settings = settings or get_settings()
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    shown_name = filename or "(no name)"
    try:
        shown_name = safe_filename(filename)
        outcome = _ingest(db, collection, shown_name, data, replace, report, settings)
    except (IngestError, LibraryError, EmbeddingModelError) as error:
        outcome = IngestOutcome(shown_name, "failed", str(error))
    except Exception as error:  # an unexpected failure still must not stop the other files
        outcome = IngestOutcome(shown_name, "failed", f"{shown_name}: could not be added ({type(error).__name__}: {error}).")
    report("done", 1.0)
    return IngestOutcome(**{**outcome.__dict__, "seconds": time.perf_counter() - started})


def _ingest(
    db: Database, collection_name: str, filename: str, data: bytes, replace: bool, report: ProgressCallback, settings: Settings
) -> IngestOutcome:
    file_type_of(filename)  # unsupported types fail before any work
    limit = int(settings.max_upload_mb * 1024 * 1024)
    if len(data) > limit:
        raise IngestError(
            filename,
            f"is {len(data) / 1024 / 1024:.1f} MB, over the {settings.max_upload_mb:g} MB limit.",
            "Split it into smaller files, or raise EXPERT_STUDIO_MAX_UPLOAD_MB.",
        )
    collection = get_collection(db, collection_name)
    sha256 = hashlib.sha256(data).hexdigest()
    with Session(db.engine) as session:
        duplicate = session.execute(
            select(Document.filename).where(Document.collection_id == collection.id, Document.sha256 == sha256)
        ).scalar()
        same_name = session.scalars(
            select(Document.id).where(Document.collection_id == collection.id, Document.filename == filename)
        ).all()
    if duplicate is not None:
        return IngestOutcome(filename, "skipped", f"{filename}: already in {collection_name!r} (same content as {duplicate!r}); skipped.")
    if same_name and not replace:
        return IngestOutcome(
            filename,
            "skipped",
            f"{filename}: a different version is already in {collection_name!r}; skipped. "
            "Tick 'Replace documents with the same name' (CLI: --replace) to replace it.",
        )

    report("parse", 0.0)
    parsed = parse_document(filename, data)
    report("chunk", _STAGE_END["parse"])
    embedder = load_embedder(collection.embedding_model)
    chunks = chunk_document(parsed, embedder.tokenizer, collection.chunk_tokens, collection.chunk_overlap)
    report("embed", _STAGE_END["chunk"])
    vectors = _embed_with_progress(embedder, [c.text_for_embedding for c in chunks], settings.embed_batch_size, report)
    report("store", _STAGE_END["embed"])

    try:
        with Session(db.engine) as session, session.begin():
            # Lock the collection row: a concurrent re-embed or replace of the same name waits.
            session.execute(select(Collection.id).where(Collection.id == collection.id).with_for_update())
            if replace and same_name:
                session.query(Document).filter(Document.id.in_(same_name)).delete(synchronize_session=False)
            document = Document(
                collection_id=collection.id,
                filename=filename,
                file_type=parsed.file_type,
                sha256=sha256,
                size_bytes=len(data),
                pages=parsed.pages,
                chunk_count=len(chunks),
            )
            session.add(document)
            session.flush()
            copy_chunks(session.connection(), document.id, collection.id, chunks, vectors)
            document_id = document.id
    except IntegrityError:  # the same content landed from another upload meanwhile
        return IngestOutcome(filename, "skipped", f"{filename}: already in {collection_name!r}; skipped.")

    status: Status = "replaced" if replace and same_name else "added"
    where = f", {parsed.pages} pages" if parsed.pages else ""
    return IngestOutcome(
        filename,
        status,
        f"{filename}: {status}, {len(chunks)} chunk{'s' if len(chunks) != 1 else ''}{where}.",
        document_id=document_id,
        chunks=len(chunks),
        pages=parsed.pages,
    )


def _embed_with_progress(embedder, texts: list[str], batch_size: int, report: ProgressCallback):
    import numpy as np

    start, end = _STAGE_END["chunk"], _STAGE_END["embed"]
    parts = []
    step = max(batch_size, 1) * 4
    for offset in range(0, len(texts), step):
        parts.append(embedder.embed(texts[offset : offset + step], batch_size=batch_size))
        report("embed", start + (end - start) * min(1.0, (offset + step) / len(texts)))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


def ingest_paths(
    db: Database,
    collection: str,
    paths: Iterable[Path],
    *,
    replace: bool = False,
    progress: Callable[[str, Stage, float], None] | None = None,
    settings: Settings | None = None,
) -> list[IngestOutcome]:
    """Ingest files (folders are walked for supported types); one outcome per file, in order."""
    outcomes = []
    for path in _expand(paths):
        try:
            data = path.read_bytes()
        except OSError as error:
            outcomes.append(IngestOutcome(path.name, "failed", f"{path}: cannot be read ({error.strerror or error})."))
            continue
        callback = (lambda stage, fraction, name=path.name: progress(name, stage, fraction)) if progress else None
        outcomes.append(ingest_bytes(db, collection, path.name, data, replace=replace, progress=callback, settings=settings))
    return outcomes


def _expand(paths: Iterable[Path]) -> list[Path]:
    from core.documents.parsing import SUPPORTED_TYPES

    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_TYPES))
        else:
            files.append(path)
    return files
