"""Collections (knowledge bases) and the documents in them: create, list, preview, delete, re-embed.

Every function takes the `Database` first, so the pages, the CLI and the tests call the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.db import Database
from core.db.tables import Chunk, Collection, Document
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
class LibraryStats:
    collections: int
    documents: int
    chunks: int


def _collection_info(collection: Collection, documents: int = 0, chunks: int = 0) -> CollectionInfo:
    return CollectionInfo(
        id=collection.id,
        name=collection.name,
        embedding_model=collection.embedding_model,
        embedding_dim=collection.embedding_dim,
        chunk_tokens=collection.chunk_tokens,
        chunk_overlap=collection.chunk_overlap,
        created_at=collection.created_at,
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
    with Session(db.engine) as session:
        if session.scalar(select(Collection.id).where(Collection.name == name)) is not None:
            raise LibraryError(f"A collection named {name!r} already exists.")
        collection = Collection(
            name=name,
            embedding_model=embedding_model,
            embedding_dim=embedder.dim,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
        )
        session.add(collection)
        session.commit()
        info = _collection_info(collection)
    ensure_vector_index(db, embedder.dim)
    return info


def get_collection(db: Database, name: str) -> CollectionInfo:
    with Session(db.engine) as session:
        collection = session.scalar(select(Collection).where(Collection.name == name))
        if collection is None:
            known = session.scalars(select(Collection.name).order_by(Collection.name)).all()
            hint = f" Existing collections: {', '.join(known)}." if known else " There are no collections yet."
            raise LibraryError(f"No collection named {name!r}.{hint}")
        return _collection_info(collection)


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
    documents = (
        select(Document.collection_id, func.count().label("n"), func.coalesce(func.sum(Document.chunk_count), 0).label("c"))
        .group_by(Document.collection_id)
        .subquery()
    )
    with Session(db.engine) as session:
        rows = session.execute(
            select(Collection, func.coalesce(documents.c.n, 0), func.coalesce(documents.c.c, 0))
            .outerjoin(documents, documents.c.collection_id == Collection.id)
            .order_by(Collection.name)
        ).all()
        return [_collection_info(collection, int(n), int(c)) for collection, n, c in rows]


def delete_collection(db: Database, name: str) -> int:
    """Delete a collection with all its documents and chunks; returns how many documents went."""
    collection = get_collection(db, name)
    with Session(db.engine) as session, session.begin():
        count = session.scalar(select(func.count()).where(Document.collection_id == collection.id))
        session.execute(delete(Collection).where(Collection.id == collection.id))
    return int(count or 0)


def list_documents(db: Database, collection: str | None = None) -> list[DocumentInfo]:
    """Documents newest first, in one collection or in all of them."""
    query = select(Document, Collection.name).join(Collection).order_by(Document.created_at.desc(), Document.id.desc())
    if collection is not None:
        query = query.where(Collection.id == get_collection(db, collection).id)
    with Session(db.engine) as session:
        return [
            DocumentInfo(
                id=d.id,
                collection=name,
                filename=d.filename,
                file_type=d.file_type,
                size_bytes=d.size_bytes,
                pages=d.pages,
                chunk_count=d.chunk_count,
                sha256=d.sha256.strip(),
                created_at=d.created_at,
            )
            for d, name in session.execute(query).all()
        ]


def find_documents(db: Database, collection: str, filename: str) -> list[DocumentInfo]:
    return [d for d in list_documents(db, collection) if d.filename == filename]


def delete_document(db: Database, document_id: int) -> DocumentInfo:
    """Delete one document; its chunks go with it (ON DELETE CASCADE)."""
    matches = [d for d in list_documents(db) if d.id == document_id]
    if not matches:
        raise LibraryError(f"No document with id {document_id}; `python -m core documents list` shows the ids.")
    with Session(db.engine) as session, session.begin():
        session.execute(delete(Document).where(Document.id == document_id))
    return matches[0]


def document_chunks(db: Database, document_id: int, limit: int | None = None) -> list[ChunkInfo]:
    """A document's chunks in order; an unknown document id raises LibraryError."""
    query = select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)
    if limit:
        query = query.limit(limit)
    with Session(db.engine) as session:
        chunks = [
            ChunkInfo(c.id, c.ordinal, c.page, c.heading, c.text, c.char_start, c.char_end, c.token_count)
            for c in session.scalars(query)
        ]
        if not chunks and session.get(Document, document_id) is None:
            raise LibraryError(f"No document with id {document_id}; `python -m core documents list` shows the ids.")
    return chunks


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
    """Switch a collection to another embedding model by re-embedding every chunk, all in one
    transaction: searches see either the old vectors or the new ones, never a mix."""
    collection = get_collection(db, name)
    embedder = load_embedder(embedding_model)
    check_embedder_fits(collection, embedder)
    ensure_vector_index(db, embedder.dim)
    with db.engine.begin() as connection:
        rows = connection.execute(
            text("SELECT id, heading, text FROM chunks WHERE collection_id = :c ORDER BY id"), {"c": collection.id}
        ).all()
        # One batch at a time, so progress (a job's ETA, its cancel) moves every `batch_size` chunks.
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            vectors = embedder.embed([embedding_text(h, t) for _, h, t in batch], batch_size=batch_size)
            # Token counts in the new model's tokenizer, so chunk lengths (BM25) stay in one unit.
            counts = embedder.count_tokens([t for _, _, t in batch])
            connection.execute(
                text("UPDATE chunks SET embedding = :e, embedding_dim = :d, token_count = :n WHERE id = :id"),
                [
                    {"e": np.asarray(v), "d": embedder.dim, "n": n, "id": row[0]}
                    for row, v, n in zip(batch, vectors, counts, strict=True)
                ],
            )
            if progress:
                progress(min(1.0, (start + len(batch)) / max(len(rows), 1)))
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
    return get_collection(db, name)
