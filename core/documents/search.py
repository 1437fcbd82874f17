"""Chunk writes (binary COPY) and search: vector (HNSW), keyword (Postgres full-text) and hybrid
(reciprocal rank fusion of the two), each one readable SQL statement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from sqlalchemy import Connection, text

from core.config import Settings, get_settings
from core.db import Database
from core.documents.chunking import ChunkDraft, embedding_text
from core.documents.embeddings import load_embedder
from core.documents.library import LibraryError, get_collection
from core.documents.rerank import rerank_order
from core.errors import UserError

SearchMode = Literal["vector", "keyword", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("hybrid", "vector", "keyword")

_COPY_COLUMNS = (
    "document_id, collection_id, ordinal, page, heading, text, char_start, char_end, token_count, embedding_dim, embedding"
)
_COPY_TYPES = ["int8", "int4", "int4", "int4", "text", "text", "int4", "int4", "int4", "int4", "vector"]


def copy_chunks(
    connection: Connection, document_id: int, collection_id: int, chunks: Sequence[ChunkDraft], vectors: np.ndarray
) -> None:
    """Bulk-load a document's chunks with binary COPY inside the caller's transaction."""
    from pgvector import Vector

    cursor = connection.connection.driver_connection.cursor()
    dim = int(vectors.shape[1])
    with cursor.copy(f"COPY chunks ({_COPY_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        for chunk, vector in zip(chunks, vectors, strict=True):
            copy.write_row(
                (
                    document_id,
                    collection_id,
                    chunk.ordinal,
                    chunk.page,
                    chunk.heading,
                    chunk.text,
                    chunk.char_start,
                    chunk.char_end,
                    chunk.token_count,
                    dim,
                    Vector(vector),
                )
            )


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    filename: str
    page: int | None
    heading: str | None
    text: str
    ordinal: int
    char_start: int
    char_end: int
    score: float  # the ranking score of the chosen mode (higher is better)
    vector_similarity: float | None  # cosine similarity, when the vector side found it
    keyword_score: float | None  # BM25, when the keyword side found it
    vector_rank: int | None
    keyword_rank: int | None
    rerank_score: float | None = None  # the collection's cross-encoder score, for the hits it rescored


class QueryError(UserError):
    """A query that cannot be run as given; the message says how to fix it."""


def _check_query(query: str, settings: Settings) -> str:
    query = (query or "").replace("\x00", " ").strip()
    if not query:
        raise QueryError("Type a question or some words to search for.")
    if len(query) > settings.max_query_chars:
        raise QueryError(
            f"The query is {len(query):,} characters long; the limit is {settings.max_query_chars:,}. "
            "Shorten it to the words that matter."
        )
    return query


# Candidates: the best `:pool` chunks of each side. The vector side orders by the same expression
# as the partial HNSW index, with pgvector 0.8 iterative scans so that filters do not starve it;
# relaxed order is re-sorted by the outer query.
_VECTOR_CTE = """
vector_hits AS MATERIALIZED (
    SELECT c.id, (c.embedding::vector({dim})) <=> :query_vector AS distance
    FROM chunks c
    WHERE c.collection_id = :collection_id AND c.embedding_dim = {dim} {document_filter}
    ORDER BY (c.embedding::vector({dim})) <=> :query_vector
    LIMIT :pool
),
vector_ranked AS (
    SELECT id, 1 - distance AS similarity, row_number() OVER (ORDER BY distance) AS rank FROM vector_hits
)"""

# Keyword side: chunks with any of the query's words (OR: natural questions rarely have every word in
# one passage, so AND would find nothing), ranked by BM25 (k1 = 1.2, b = 0.75, the usual defaults):
# a word's weight falls with the number of chunks that have it, so "the pump" is decided by "pump".
# ts_rank, which has no such weight, scored nDCG@10 0.52 on SciFact against BM25's 0.69 (docs/benchmarks.md).
# - term frequencies: the positions of the query's words in each matching chunk's tsvector
#   (setweight + ts_filter keep just those words, so a chunk's other words are never unnested);
# - document frequencies: counted over the same matches (a chunk with the word matches the OR query);
# - collection size and average chunk length: from the documents' totals, not a scan of the chunks
#   (of the filtered documents when there is a document filter, like the document frequencies).
# Only chunks with a vector of the collection's dimension, like the vector side: hybrid search computes
# the cosine similarity of every keyword hit, which a vector of another dimension would turn into an
# error (the re-embed and upload locks keep such chunks out; this keeps search working regardless).
_KEYWORD_CTE = """
keyword_query AS (
    SELECT replace(plainto_tsquery('english', :query_text)::text, ' & ', ' | ')::tsquery AS q,
           ARRAY(SELECT DISTINCT t.lexeme FROM unnest(to_tsvector('english', :query_text)) AS t) AS lexemes
),
keyword_matches AS (
    SELECT c.id, c.token_count, w.lexeme, cardinality(w.positions) AS tf
    FROM chunks c
    CROSS JOIN keyword_query kq
    CROSS JOIN LATERAL unnest(ts_filter(setweight(setweight(c.tsv, 'D'), 'A', kq.lexemes), '{{a}}')) AS w
    WHERE c.collection_id = :collection_id AND c.embedding_dim = {dim} AND c.tsv @@ kq.q {document_filter}
),
keyword_stats AS (
    SELECT greatest(sum(chunk_count), 1)::float8 AS chunks,
           greatest(sum(token_count)::float8 / greatest(sum(chunk_count), 1), 1) AS mean_tokens
    FROM documents d WHERE d.collection_id = :collection_id {stats_filter}
),
keyword_scored AS (
    SELECT m.id,
           sum(ln(1 + (s.chunks - f.df + 0.5) / (f.df + 0.5))
               * m.tf * 2.2 / (m.tf + 1.2 * (0.25 + 0.75 * m.token_count / s.mean_tokens))) AS score
    FROM keyword_matches m
    JOIN (SELECT lexeme, count(*)::float8 AS df FROM keyword_matches GROUP BY lexeme) f USING (lexeme)
    CROSS JOIN keyword_stats s
    GROUP BY m.id
),
keyword_ranked AS (
    SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank
    FROM keyword_scored
    ORDER BY score DESC, id
    LIMIT :pool
)"""

_SELECT = """
SELECT c.id, c.document_id, d.filename, c.page, c.heading, c.text, c.ordinal, c.char_start, c.char_end,
       {score} AS score, {similarity} AS similarity, {keyword} AS keyword_score,
       {vector_rank} AS vector_rank, {keyword_rank} AS keyword_rank
FROM {source}
JOIN chunks c ON c.id = {id_expr}
JOIN documents d ON d.id = c.document_id
ORDER BY score DESC, c.id
LIMIT :k"""


def _search_sql(mode: SearchMode, dim: int, filtered: bool) -> str:
    document_filter = "AND c.document_id = ANY(:document_ids)" if filtered else ""
    vector_cte = _VECTOR_CTE.format(dim=int(dim), document_filter=document_filter)
    # With a document filter, the collection size and mean length come from the same documents as
    # the document frequencies: mixing the scopes makes every word look rare (no IDF weighting left).
    stats_filter = "AND d.id = ANY(:document_ids)" if filtered else ""
    keyword_cte = _KEYWORD_CTE.format(dim=int(dim), document_filter=document_filter, stats_filter=stats_filter)
    if mode == "vector":
        return "WITH " + vector_cte + _SELECT.format(
            score="v.similarity", similarity="v.similarity", keyword="NULL::real", vector_rank="v.rank",
            keyword_rank="NULL::bigint", source="vector_ranked v", id_expr="v.id",
        )
    if mode == "keyword":
        return "WITH " + keyword_cte + _SELECT.format(
            score="k.score", similarity="NULL::float8", keyword="k.score", vector_rank="NULL::bigint",
            keyword_rank="k.rank", source="keyword_ranked k", id_expr="k.id",
        )
    # Reciprocal rank fusion: each side contributes 1 / (rrf_k + rank) for the chunks it found.
    # A chunk only the keyword side found still gets its exact cosine similarity (k rows at most), so
    # a relevance threshold on similarity (RAG) judges every hit, not only the vector side's.
    return "WITH " + vector_cte + "," + keyword_cte + _SELECT.format(
        score="coalesce(1.0 / (:rrf_k + v.rank), 0.0) + coalesce(1.0 / (:rrf_k + k.rank), 0.0)",
        similarity=f"coalesce(v.similarity, 1 - ((c.embedding::vector({int(dim)})) <=> :query_vector))",
        keyword="k.score", vector_rank="v.rank", keyword_rank="k.rank",
        source="vector_ranked v FULL OUTER JOIN keyword_ranked k ON k.id = v.id", id_expr="coalesce(v.id, k.id)",
    )


def _query_vector(query: str, collection: str, model: str, dim: int) -> np.ndarray:
    embedder = load_embedder(model)
    if embedder.dim != dim:
        raise LibraryError(
            f"Collection {collection!r} was embedded with {dim} dimensions but {model} now gives "
            f"{embedder.dim}; re-embed the collection."
        )
    return embedder.embed([query])[0]


def search(
    db: Database,
    query: str,
    *,
    collection: str,
    k: int = 5,
    mode: SearchMode = "hybrid",
    document_ids: Sequence[int] | None = None,
    settings: Settings | None = None,
    rerank: bool = True,
) -> list[SearchHit]:
    """The `k` best chunks of `collection` for `query`, best first, with their document, page,
    offsets and scores. `document_ids` narrows the search to those documents. A collection that names a
    reranker has its best hits reordered by it (core/documents/rerank.py); `rerank=False` skips that."""
    settings = settings or get_settings()
    if mode not in SEARCH_MODES:
        raise QueryError(f"Unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}.")
    if not 1 <= k <= 1000:
        raise QueryError(f"k must be between 1 and 1000 (got {k}).")
    query = _check_query(query, settings)
    info = get_collection(db, collection)
    # Embedded before a connection is taken: a pooled connection is not held through CPU work
    # (20 sessions searching at once would otherwise wait on the pool).
    query_vector = (_query_vector(query, collection, info.embedding_model, info.embedding_dim)
                    if mode != "keyword" else None)
    params: dict = {
        "collection_id": info.id,
        "k": k,
        "pool": max(k, settings.search_candidates),
        "rrf_k": settings.rrf_k,
        "query_text": query,
        "document_ids": list(document_ids or []),
    }
    # One snapshot for the collection's model and its chunks: a re-embed that commits meanwhile cannot
    # pair a query embedded with one model with chunks of another.
    with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection, connection.begin():
        current = connection.execute(
            text("SELECT embedding_model, embedding_dim, rerank_model FROM collections WHERE id = :c"), {"c": info.id}
        ).first()
        if current is None:
            raise LibraryError(f"The collection {collection!r} was deleted meanwhile.")
        model, dim, rerank_model = current
        rerank_model = rerank_model if rerank else None
        if rerank_model:  # the reranker sees the best rerank_candidates hits even when fewer are asked for
            params["k"] = max(k, settings.rerank_candidates)
            params["pool"] = max(params["k"], params["pool"])
        if mode != "keyword":
            if (model, dim) != (info.embedding_model, info.embedding_dim):  # a re-embed committed meanwhile (rare)
                query_vector = _query_vector(query, collection, model, dim)
            params["query_vector"] = query_vector
        sql = _search_sql(mode, dim, filtered=document_ids is not None)
        connection.execute(
            text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', :ef, true)"),
            {"ef": str(max(settings.hnsw_ef_search, params["k"]))},
        )
        rows = connection.execute(text(sql), params).all()
    hits = [
        SearchHit(
            chunk_id=row.id,
            document_id=row.document_id,
            filename=row.filename,
            page=row.page,
            heading=row.heading,
            text=row.text,
            ordinal=row.ordinal,
            char_start=row.char_start,
            char_end=row.char_end,
            score=float(row.score),
            vector_similarity=None if row.similarity is None else float(row.similarity),
            keyword_score=None if row.keyword_score is None else float(row.keyword_score),
            vector_rank=row.vector_rank,
            keyword_rank=row.keyword_rank,
        )
        for row in rows
    ]
    if rerank_model and hits:  # after the connection is back in the pool: scoring pairs is CPU work
        order = rerank_order(query, [embedding_text(h.heading, h.text) for h in hits], rerank_model,
                             collection=collection, settings=settings)
        hits = [replace(hits[i], rerank_score=score) for i, score in order] + hits[len(order):]
    return hits[:k]
