"""Collections (knowledge bases) and the documents in them: create, list, preview, delete, re-embed.

Every function takes the `Database` first, so the pages, the CLI and the tests call the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Row, text

from core.config import Settings, get_settings
from core.db import Database
from core.documents.chunking import embedding_text
from core.documents.embeddings import load_embedder
from core.errors import UserError


class LibraryError(UserError):
    """A request the library cannot carry out; the message says why and what to do."""


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    embedding_model: str
    embedding_dim: int
    chunk_tokens: int
    chunk_overlap: int
    created_at: datetime
    document_count: int = 0
    chunk_count: int = 0


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    collection: str
    filename: str
    file_type: str
    size_bytes: int
    pages: int | None
    chunk_count: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class ChunkInfo:
    id: int
    ordinal: int
    page: int | None
    heading: str | None
    text: str
    char_start: int
    char_end: int
    token_count: int


@dataclass(frozen=True)
class ChunkText:
    """A chunk's text and where it comes from: what training data and exams are written from."""

    id: int
    document_id: int
    heading: str | None
    text: str


@dataclass(frozen=True)
class LibraryStats:
    collections: int
    documents: int
    chunks: int


# The columns of a collections row that CollectionInfo holds, in its order.
_COLLECTION_COLUMNS = "id, name, embedding_model, embedding_dim, chunk_tokens, chunk_overlap, created_at"


def _collection_info(row: Row, documents: int = 0, chunks: int = 0) -> CollectionInfo:
    return CollectionInfo(
        id=row.id,
        name=row.name,
        embedding_model=row.embedding_model,
        embedding_dim=row.embedding_dim,
        chunk_tokens=row.chunk_tokens,
        chunk_overlap=row.chunk_overlap,
        created_at=row.created_at,
        document_count=documents,
        chunk_count=chunks,
    )


def _validate_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise LibraryError("A collection needs a name.")
    if len(name) > 100:
        raise LibraryError(f"Collection names are at most 100 characters; this one has {len(name)}.")
    if re.search(r"[\x00-\x1f]", name):
        raise LibraryError("A collection name cannot contain control characters.")
    return name


def ensure_vector_index(db: Database, dim: int) -> None:
    """An HNSW index for vectors of `dim` dimensions (one partial index per dimension in use,
    since an HNSW index needs a fixed dimension and collections may use different models)."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS chunks_embedding_{int(dim)}_hnsw ON chunks "
                f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) WHERE embedding_dim = {int(dim)}"
            )
        )


def create_collection(
    db: Database,
    name: str,
    *,
    embedding_model: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    settings: Settings | None = None,
) -> CollectionInfo:
    settings = settings or get_settings()
    name = _validate_name(name)
    embedding_model = (embedding_model or settings.embedding_model).strip()
    chunk_tokens = chunk_tokens or settings.chunk_tokens
    chunk_overlap = settings.chunk_overlap if chunk_overlap is None else chunk_overlap
    embedder = load_embedder(embedding_model)
    if chunk_tokens > embedder.max_tokens:
        raise LibraryError(
            f"Chunks of {chunk_tokens} tokens are longer than {embedding_model} reads "
            f"({embedder.max_tokens} tokens); choose {embedder.max_tokens} or less."
        )
    if not 0 <= chunk_overlap < chunk_tokens:
        raise LibraryError(f"The overlap ({chunk_overlap}) must be at least 0 and less than the chunk size ({chunk_tokens}).")
    with db.engine.begin() as connection:
        if connection.execute(text("SELECT 1 FROM collections WHERE name = :n"), {"n": name}).first() is not None:
            raise LibraryError(f"A collection named {name!r} already exists.")
        row = connection.execute(
            text(
                "INSERT INTO collections (name, embedding_model, embedding_dim, chunk_tokens, chunk_overlap) "
                f"VALUES (:name, :model, :dim, :tokens, :overlap) RETURNING {_COLLECTION_COLUMNS}"
            ),
            {"name": name, "model": embedding_model, "dim": embedder.dim, "tokens": chunk_tokens, "overlap": chunk_overlap},
        ).one()
    info = _collection_info(row)
    ensure_vector_index(db, embedder.dim)
    return info


def get_collection(db: Database, name: str) -> CollectionInfo:
    with db.engine.connect() as connection:
        row = connection.execute(text(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = :n"), {"n": name}).first()
        if row is None:
            known = connection.execute(text("SELECT name FROM collections ORDER BY name")).scalars().all()
            hint = f" Existing collections: {', '.join(known)}." if known else " There are no collections yet."
            raise LibraryError(f"No collection named {name!r}.{hint}")
    return _collection_info(row)


def ensure_collection(db: Database, name: str, settings: Settings | None = None) -> CollectionInfo:
    """The collection called `name`, created with the default settings if it does not exist yet."""
    try:
        return get_collection(db, name)
    except LibraryError:
        try:
            return create_collection(db, name, settings=settings)
        except LibraryError:  # created by another process in between
            return get_collection(db, name)


def list_collections(db: Database) -> list[CollectionInfo]:
    """Every collection by name, with how many documents and chunks it holds."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                """
                WITH counts AS (
                    SELECT collection_id, count(*) AS documents, coalesce(sum(chunk_count), 0) AS chunks
                    FROM documents
                    GROUP BY collection_id
                )
                SELECT k.id, k.name, k.embedding_model, k.embedding_dim, k.chunk_tokens, k.chunk_overlap, k.created_at,
                       coalesce(counts.documents, 0) AS documents, coalesce(counts.chunks, 0) AS chunks
                FROM collections k
                LEFT JOIN counts ON counts.collection_id = k.id
                ORDER BY k.name
                """
            )
        ).all()
    return [_collection_info(row, int(row.documents), int(row.chunks)) for row in rows]


def delete_collection(db: Database, name: str) -> int:
    """Delete a collection with all its documents and chunks; returns how many documents went."""
    collection = get_collection(db, name)
    with db.engine.begin() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM documents WHERE collection_id = :c"), {"c": collection.id}
        ).scalar()
        connection.execute(text("DELETE FROM collections WHERE id = :c"), {"c": collection.id})
    return int(count or 0)


def list_documents(db: Database, collection: str | None = None) -> list[DocumentInfo]:
    """Documents newest first, in one collection or in all of them."""
    where, params = "", {}
    if collection is not None:
        where, params = "WHERE d.collection_id = :c", {"c": get_collection(db, collection).id}
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                f"""
                SELECT d.id, k.name AS collection, d.filename, d.file_type, d.size_bytes, d.pages, d.chunk_count,
                       d.sha256, d.created_at
                FROM documents d
                JOIN collections k ON k.id = d.collection_id
                {where}
                ORDER BY d.created_at DESC, d.id DESC
                """
            ),
            params,
        ).all()
    return [
        DocumentInfo(
            id=d.id,
            collection=d.collection,
            filename=d.filename,
            file_type=d.file_type,
            size_bytes=d.size_bytes,
            pages=d.pages,
            chunk_count=d.chunk_count,
            sha256=d.sha256.strip(),
            created_at=d.created_at,
        )
        for d in rows
    ]


def find_documents(db: Database, collection: str, filename: str) -> list[DocumentInfo]:
    return [d for d in list_documents(db, collection) if d.filename == filename]


def delete_document(db: Database, document_id: int) -> DocumentInfo:
    """Delete one document; its chunks go with it (ON DELETE CASCADE)."""
    matches = [d for d in list_documents(db) if d.id == document_id]
    if not matches:
        raise LibraryError(f"No document with id {document_id}; `python -m core documents list` shows the ids.")
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM documents WHERE id = :d"), {"d": document_id})
    return matches[0]


def document_chunks(db: Database, document_id: int, limit: int | None = None) -> list[ChunkInfo]:
    """A document's chunks in order; an unknown document id raises LibraryError."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, ordinal, page, heading, text, char_start, char_end, token_count FROM chunks "
                "WHERE document_id = :d ORDER BY ordinal LIMIT :limit"
            ),
            {"d": document_id, "limit": limit or None},  # LIMIT NULL: every chunk
        ).all()
        chunks = [ChunkInfo(*row) for row in rows]
        if not chunks and connection.execute(text("SELECT 1 FROM documents WHERE id = :d"), {"d": document_id}).first() is None:
            raise LibraryError(f"No document with id {document_id}; `python -m core documents list` shows the ids.")
    return chunks


def collection_chunks(db: Database, collection_id: int) -> list[ChunkText]:
    """Every chunk of a collection in reading order (document by document); empty when it has none."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, document_id, heading, text FROM chunks WHERE collection_id = :c ORDER BY document_id, ordinal"
            ),
            {"c": collection_id},
        ).all()
    return [ChunkText(*row) for row in rows]


def library_stats(db: Database) -> LibraryStats:
    with db.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT (SELECT count(*) FROM collections), (SELECT count(*) FROM documents), "
                "(SELECT coalesce(sum(chunk_count), 0) FROM documents)"
            )
        ).one()
    return LibraryStats(int(row[0]), int(row[1]), int(row[2]))


def check_embedder_fits(collection: CollectionInfo, embedder) -> None:
    """A model that reads less than the collection's chunks would embed them cut short: refused."""
    if embedder.max_tokens < collection.chunk_tokens:
        raise LibraryError(
            f"{embedder.name} reads at most {embedder.max_tokens} tokens, less than this collection's "
            f"chunks ({collection.chunk_tokens}); create a new collection with smaller chunks instead."
        )


def reembed_collection(
    db: Database,
    name: str,
    embedding_model: str,
    *,
    batch_size: int = 64,
    progress: Callable[[float], None] | None = None,
) -> CollectionInfo:
    """Switch a collection to another embedding model by re-embedding every chunk; searches see
    either the old vectors or the new ones, never a mix.

    The chunks are embedded first with no lock held (that is where the time goes: uploads, deletes
    and searches go on meanwhile, on the old model). Then one short transaction locks the collection
    row before it touches any chunk, embeds the chunks uploaded meanwhile, writes every new vector
    and switches the model. An upload's store transaction holds a share lock on the same row while
    it checks the model and writes its chunks (core.documents.ingest), so it either lands before
    that lock (and is caught up here) or after the switch (and embeds with the new model). Locking
    the row before any chunk keeps the lock order of an upload that replaces a document: no deadlock.
    The new vectors wait in memory until then (4 bytes per dimension and chunk)."""
    collection = get_collection(db, name)
    embedder = load_embedder(embedding_model)
    check_embedder_fits(collection, embedder)
    ensure_vector_index(db, embedder.dim)
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, heading, text FROM chunks WHERE collection_id = :c ORDER BY id"), {"c": collection.id}
        ).all()
    # Most of the bar: the embedding without a lock; the last step is reported under the lock, before it commits.
    updates = _embed_chunks(embedder, rows, batch_size, progress and (lambda done: progress(0.99 * done / len(rows))))
    with db.engine.begin() as connection:
        if connection.execute(
            text("SELECT 1 FROM collections WHERE id = :c FOR NO KEY UPDATE"), {"c": collection.id}
        ).first() is None:
            raise LibraryError(f"Collection {name!r} was deleted while it was being re-embedded.")
        late = connection.execute(
            text("SELECT id, heading, text FROM chunks WHERE collection_id = :c AND id <> ALL(:seen) ORDER BY id"),
            {"c": collection.id, "seen": [row.id for row in rows]},
        ).all()
        updates += _embed_chunks(embedder, late, batch_size)
        if updates:  # chunks deleted meanwhile match no row: nothing to update
            connection.execute(
                text("UPDATE chunks SET embedding = :e, embedding_dim = :d, token_count = :n "
                     "WHERE id = :id AND collection_id = :c"),
                [dict(update, c=collection.id) for update in updates],
            )
        connection.execute(
            text(
                "UPDATE documents d SET token_count = t.total FROM (SELECT document_id, sum(token_count) AS total "
                "FROM chunks WHERE collection_id = :c GROUP BY document_id) t WHERE t.document_id = d.id"
            ),
            {"c": collection.id},
        )
        connection.execute(
            text("UPDATE collections SET embedding_model = :m, embedding_dim = :d WHERE id = :c"),
            {"m": embedding_model, "d": embedder.dim, "c": collection.id},
        )
        if progress:
            progress(1.0)  # still under the lock: a cancel now rolls everything back
    return get_collection(db, name)


def _embed_chunks(embedder, rows, batch_size: int, progress: Callable[[int], None] | None = None) -> list[dict]:
    """The UPDATE parameters of each chunk (id, heading, text) embedded with `embedder`: its vector,
    the dimension, and its token count in the new model's tokenizer (so chunk lengths, which BM25
    uses, stay in one unit). One batch at a time, so progress (a job's ETA, its cancel) moves
    every `batch_size` chunks with the number of chunks done."""
    updates = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        vectors = embedder.embed([embedding_text(h, t) for _, h, t in batch], batch_size=batch_size)
        counts = embedder.count_tokens([t for _, _, t in batch])
        updates += [{"e": np.asarray(v), "d": embedder.dim, "n": n, "id": row[0]}
                    for row, v, n in zip(batch, vectors, counts, strict=True)]
        if progress:
            progress(start + len(batch))
    return updates
