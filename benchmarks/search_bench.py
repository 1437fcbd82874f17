"""Search latency (vector, keyword, hybrid) and HNSW recall@10 on 100,000 chunks of 384 dimensions.

What is measured, through the product's own code:
  * p50/p95 latency of `core.documents.search.search(..., k=10)` per mode, end to end (query embedding +
    SQL), and separately the two parts: the query embedding alone and the SQL alone (the exact
    statement `search` runs, from `core.documents.search._search_sql`, with a precomputed query vector);
  * recall@10 of the HNSW index against exact search (brute force in numpy over the same float32
    unit vectors), for the default `hnsw_ef_search` and a few other values, with the SQL latency
    of each; exact search in Postgres (index scans off) is timed too, as the alternative.

Data: embedding 100k real texts would take hours on 2 CPU cores, so realistic data is built
cheaply. `--base` real SciFact sentences are embedded with the bundled MiniLM; each synthetic
chunk is anchor + w * partner + noise (anchor and partner two random base sentences,
w ~ U(0, 0.6), Gaussian noise of `--noise` per dimension), normalised. The vectors therefore
lie in clusters around real sentence embeddings, as real chunk embeddings do (uniform random
vectors give an unrealistically hard HNSW problem), and each chunk's text is the anchor
sentence followed by the partner sentence, so keyword search ranks real English. Chunks are
loaded as `--docs` documents (one INSERT each) with binary COPY (`core.documents.search.copy_chunks`).
The queries are real SciFact claims (the test split, embedded at query time).

By default the HNSW index is dropped before the load and rebuilt after it (with
maintenance_work_mem raised for the build); `--index-during-load` keeps it and lets every
COPY maintain it, to compare the two ways.

    PYTHONPATH=. .venv/bin/python benchmarks/search_bench.py [--chunks 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_SCIFACT, data_dir, machine, percentile, scifact_corpus, scifact_queries, scifact_test_qrels, table
from sqlalchemy import text

from core.config import Settings
from core.db import open_database
from core.documents.chunking import ChunkDraft
from core.documents.embeddings import load_embedder
from core.documents.library import create_collection, ensure_vector_index
from core.documents.search import _search_sql, copy_chunks, search

MODES = ("vector", "keyword", "hybrid")
COLLECTION = "bench"
INDEX = "chunks_embedding_384_hnsw"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def base_sentences(corpus: list[dict], count: int, rng: random.Random) -> list[str]:
    sentences = [s for doc in corpus for s in _SENTENCE_END.split(doc["text"]) if 40 <= len(s) <= 400]
    return rng.sample(sentences, count)


def synthetic_chunks(base: np.ndarray, sentences: list[str], count: int, noise: float, seed: int):
    """`count` unit vectors clustered around the base embeddings, with their texts."""
    rng = np.random.default_rng(seed)
    anchor = rng.integers(len(base), size=count)
    partner = rng.integers(len(base), size=count)
    weight = rng.uniform(0.0, 0.6, size=(count, 1)).astype(np.float32)
    vectors = base[anchor] + weight * base[partner] + rng.normal(0.0, noise, size=(count, base.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"{sentences[a]} {sentences[p]}" for a, p in zip(anchor, partner, strict=True)]
    return vectors.astype(np.float32), texts


def load(db, collection_id: int, vectors: np.ndarray, texts: list[str], docs: int, keep_index: bool) -> dict[str, float]:
    """Documents by INSERT, chunks by binary COPY; seconds per step."""
    seconds = {}
    per_doc = -(-len(vectors) // docs)
    if not keep_index:
        with db.engine.begin() as connection:
            connection.execute(text(f"DROP INDEX {INDEX}"))
    start = time.perf_counter()
    with db.engine.begin() as connection:
        for number in range(docs):
            rows = range(number * per_doc, min((number + 1) * per_doc, len(vectors)))
            if not rows:
                break
            name = f"synthetic-{number:05d}.md"
            drafts = [
                ChunkDraft(ordinal=o, text=texts[i], page=None, heading=None, char_start=0, char_end=len(texts[i]),
                           token_count=len(texts[i].split()))
                for o, i in enumerate(rows)
            ]
            document_id = connection.execute(
                text(
                    "INSERT INTO documents (collection_id, filename, file_type, sha256, size_bytes, pages, chunk_count, token_count) "
                    "VALUES (:c, :f, 'markdown', :sha256, :size, NULL, :chunks, :tokens) RETURNING id"
                ),
                {"c": collection_id, "f": name, "sha256": hashlib.sha256(name.encode()).hexdigest(),
                 "size": sum(len(texts[i]) for i in rows), "chunks": len(rows), "tokens": sum(d.token_count for d in drafts)},
            ).scalar_one()
            copy_chunks(connection, document_id, collection_id, drafts, vectors[rows.start : rows.stop])
    seconds["COPY (documents + chunks)"] = time.perf_counter() - start
    if not keep_index:
        start = time.perf_counter()
        # The same index the product creates (core.documents.library.ensure_vector_index), built with enough
        # memory for the whole graph; new connections of this throwaway database pick the setting up.
        with db.engine.begin() as connection:
            connection.execute(text("ALTER DATABASE postgres SET maintenance_work_mem = '1GB'"))
        db.engine.dispose()
        ensure_vector_index(db, vectors.shape[1])
        seconds["CREATE INDEX (HNSW)"] = time.perf_counter() - start
    start = time.perf_counter()
    with db.engine.begin() as connection:
        connection.execute(text("ANALYZE chunks"))
    seconds["ANALYZE"] = time.perf_counter() - start
    return seconds


def run_sql(db, mode: str, collection_id: int, query: str, vector: np.ndarray, settings: Settings, k: int = 10,
            exact: bool = False) -> list[int]:
    """The statement `core.documents.search.search` runs, without the query embedding; chunk ids, best first."""
    params = {"collection_id": collection_id, "k": k, "pool": max(k, settings.search_candidates), "rrf_k": settings.rrf_k,
              "query_text": query, "document_ids": [], "query_vector": vector}
    with db.engine.begin() as connection:
        connection.execute(
            text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', :ef, true)"),
            {"ef": str(max(settings.hnsw_ef_search, k))},
        )
        if exact:
            connection.execute(text("SET LOCAL enable_indexscan = off"))
        return [row.id for row in connection.execute(text(_search_sql(mode, len(vector), filtered=False)), params)]


def ms(values: list[float], q: float) -> str:
    return f"{1000 * percentile(values, q):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks in the collection (default 100000)")
    parser.add_argument("--docs", type=int, default=1000, help="documents they belong to (default 1000)")
    parser.add_argument("--base", type=int, default=4000, help="real SciFact sentences embedded as cluster centres (default 4000)")
    parser.add_argument("--noise", type=float, default=0.02, help="Gaussian noise per dimension (default 0.02)")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test claims used as queries (default 300, max 300)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up queries per mode (default 10)")
    parser.add_argument("--ef", type=int, nargs="*", default=[40, 100, 200], help="hnsw_ef_search values for the recall table")
    parser.add_argument("--index-during-load", action="store_true", help="keep the HNSW index during COPY instead of rebuilding it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="data folder to use and keep (default: a temporary one)")
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    args = parser.parse_args()

    settings = Settings(data_dir=data_dir(args.data_dir))
    db = open_database(settings)
    embedder = load_embedder(settings.embedding_model)
    print(f"machine: {machine()}")

    rng = random.Random(args.seed)
    sentences = base_sentences(scifact_corpus(args.scifact), args.base, rng)
    start = time.perf_counter()
    base = embedder.embed(sentences, batch_size=settings.embed_batch_size)
    print(f"embedded {len(sentences)} base sentences in {time.perf_counter() - start:.0f} s")
    vectors, texts = synthetic_chunks(base, sentences, args.chunks, args.noise, args.seed)

    collection = create_collection(db, COLLECTION, settings=settings)
    load_seconds = load(db, collection.id, vectors, texts, args.docs, args.index_during_load)
    with db.engine.connect() as connection:
        ids = np.array(connection.execute(
            text("SELECT id FROM chunks WHERE collection_id = :c ORDER BY document_id, ordinal"), {"c": collection.id}
        ).scalars().all())
        index_mb = connection.execute(text(f"SELECT pg_relation_size('{INDEX}') / 1e6")).scalar()
    assert len(ids) == len(vectors)
    print(f"loaded {len(vectors):,} chunks in {args.docs} documents "
          f"({'index maintained during COPY' if args.index_during_load else 'index dropped, rebuilt after COPY'}); "
          f"HNSW index {index_mb:.0f} MB")
    print(table(["load step", "seconds"], [[step, f"{s:.1f}"] for step, s in load_seconds.items()]))

    qrels = scifact_test_qrels(args.scifact)
    all_queries = scifact_queries(args.scifact)
    queries = [all_queries[q] for q in qrels][: args.queries]
    query_vectors = embedder.embed(queries, batch_size=settings.embed_batch_size)
    exact_top = np.argsort(-(query_vectors @ vectors.T), axis=1)[:, :10]
    exact_ids = [set(ids[row].tolist()) for row in exact_top]
    similarities = np.sort(query_vectors @ vectors.T, axis=1)[:, ::-1]
    print(f"{len(queries)} queries; mean cosine of their exact top-1 {similarities[:, 0].mean():.3f}, "
          f"top-10 {similarities[:, 9].mean():.3f}, top-100 {similarities[:, 99].mean():.3f}")

    with db.engine.connect() as connection:
        plan = "\n".join(connection.execute(
            text("EXPLAIN " + _search_sql("vector", 384, filtered=False)),
            {"collection_id": collection.id, "k": 10, "pool": 100, "query_vector": query_vectors[0]},
        ).scalars())
    print(f"vector search uses the HNSW index: {'yes' if INDEX in plan else 'NO'}\n")

    # Warm-up, then every query through every mode, interleaved so that drift hits all alike.
    for query, vector in zip(queries[: args.warmup], query_vectors, strict=False):
        for mode in MODES:
            search(db, query, collection=COLLECTION, k=10, mode=mode, settings=settings)
            run_sql(db, mode, collection.id, query, vector, settings)
    total = {m: [] for m in MODES}
    sql = {m: [] for m in MODES}
    embed_times = []
    recall_default = []
    for query, vector, truth in zip(queries, query_vectors, exact_ids, strict=True):
        start = time.perf_counter()
        embedder.embed([query])
        embed_times.append(time.perf_counter() - start)
        for mode in MODES:
            start = time.perf_counter()
            hits = search(db, query, collection=COLLECTION, k=10, mode=mode, settings=settings)
            total[mode].append(time.perf_counter() - start)
            start = time.perf_counter()
            run_sql(db, mode, collection.id, query, vector, settings)
            sql[mode].append(time.perf_counter() - start)
            if mode == "vector":
                recall_default.append(len(truth & {h.chunk_id for h in hits}) / 10)

    rows = [[f"{mode} search", ms(total[mode], 50), ms(total[mode], 95), ms(sql[mode], 50), ms(sql[mode], 95),
             f"{percentile(sql[mode], 50) / percentile(sql['vector'], 50):.1f}x"] for mode in MODES]
    rows.append(["query embedding alone", ms(embed_times, 50), ms(embed_times, 95), "", "", ""])
    print(f"latency, k=10, {len(vectors):,} chunks, {len(queries)} queries (ms):")
    print(table(["", "search() p50", "search() p95", "SQL only p50", "SQL only p95", "SQL p50 vs vector"], rows))

    # Recall of the index against exact search, and what a larger or smaller ef_search costs.
    recall_rows = []
    for ef in sorted(set(args.ef) | {settings.hnsw_ef_search}):
        tuned = settings.model_copy(update={"hnsw_ef_search": ef})
        latencies, recalls = [], []
        for query, vector, truth in zip(queries, query_vectors, exact_ids, strict=True):
            start = time.perf_counter()
            found = run_sql(db, "vector", collection.id, query, vector, tuned)
            latencies.append(time.perf_counter() - start)
            recalls.append(len(truth & set(found)) / 10)
        label = f"HNSW, ef_search={ef}" + (" (default)" if ef == settings.hnsw_ef_search else "")
        recall_rows.append([label, f"{np.mean(recalls):.3f}", f"{min(recalls):.1f}", ms(latencies, 50), ms(latencies, 95)])
    sample = min(50, len(queries))
    latencies, agree = [], []
    for query, vector, truth in zip(queries[:sample], query_vectors, exact_ids, strict=False):
        start = time.perf_counter()
        found = run_sql(db, "vector", collection.id, query, vector, settings, exact=True)
        latencies.append(time.perf_counter() - start)
        agree.append(len(truth & set(found)) / 10)
    recall_rows.append([f"exact in Postgres (index scans off, {sample} queries)", f"{np.mean(agree):.3f}", f"{min(agree):.1f}",
                        ms(latencies, 50), ms(latencies, 95)])
    print(f"\nrecall@10 against exact search (numpy brute force), vector SQL only; search() recall at the default: "
          f"{np.mean(recall_default):.3f}")
    print(table(["", "recall@10", "worst query", "SQL p50 ms", "SQL p95 ms"], recall_rows))

    p50 = 1000 * percentile(total["vector"], 50)
    recall = float(np.mean(recall_default))
    print(f"\ngoals: vector search p50 {p50:.1f} ms ({'meets' if p50 < 10 else 'MISSES'} < 10 ms; SQL alone "
          f"{1000 * percentile(sql['vector'], 50):.1f} ms), recall@10 {recall:.3f} ({'meets' if recall >= 0.95 else 'MISSES'} >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
