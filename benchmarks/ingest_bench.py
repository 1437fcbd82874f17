"""Ingestion throughput: what does the whole pipeline cost on top of the embedding model?

Embedding is the unavoidable cost of ingestion on a CPU, so the pipeline is measured against it on
the same chunks, in the same process, with the same batch size:

  (a) embedding alone: parse and chunk every document beforehand, then time only
      `embedder.embed(all chunk texts, batch_size=settings.embed_batch_size)`;
  (a') embedding alone, one call per document (the batches the pipeline can form, since
      `ingest_bytes` embeds one file at a time): separates the batching loss from the rest;
  (b) the whole pipeline: `ingest_bytes` per file into a fresh collection (parse, chunk, embed,
      one transaction with a binary COPY), with a per-stage breakdown from its progress callback.

Goal: (b) takes at most 15% longer than (a). The corpus is SciFact abstracts (title + text as a
Markdown file each), read at run time. Sides are interleaved and repeated; medians are reported.

    PYTHONPATH=. .venv/bin/python benchmarks/ingest_bench.py [--chunks 2000] [--repeats 2] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

from _common import DEFAULT_SCIFACT, as_markdown, data_dir, machine, median, scifact_corpus, table

from core.config import Settings
from core.db import open_database
from core.documents.chunking import chunk_document
from core.documents.parsing import parse_document
from core.embeddings import load_embedder
from core.ingest import ingest_bytes
from core.library import create_collection

GOAL = 1.15


def prepare(corpus: list[dict], embedder, settings: Settings, target_chunks: int, max_docs: int | None):
    """The first documents of the corpus that together give at least `target_chunks` chunks."""
    files, per_doc_texts = [], []
    for doc in corpus[: max_docs or len(corpus)]:
        data = as_markdown(doc)
        chunks = chunk_document(parse_document(f"{doc['_id']}.md", data), embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
        files.append((f"{doc['_id']}.md", data))
        per_doc_texts.append([c.text_for_embedding for c in chunks])
        if sum(map(len, per_doc_texts)) >= target_chunks:
            break
    return files, per_doc_texts


def padded_tokens(embedder, batches: list[list[str]], batch_size: int) -> int:
    """Tokens the model computes for these calls, padding included: sentence-transformers sorts each
    call's texts by length and pads every batch of `batch_size` to its longest text."""
    limit = int(embedder.model.get_max_seq_length())
    total = 0
    for texts in batches:
        lengths = [min(n + 2, limit) for n in embedder.count_tokens(sorted(texts, key=len, reverse=True))]
        total += sum(len(lengths[i : i + batch_size]) * max(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))
    return total


def run_pipeline(db, collection: str, files, settings: Settings) -> tuple[float, dict[str, float], int]:
    """Ingest every file; wall time, seconds per stage (from the progress callback), chunks stored."""
    stages = dict.fromkeys(("checks", "parse+chunk", "embed", "store", "after"), 0.0)
    chunks = 0
    started = time.perf_counter()
    for filename, data in files:
        marks: dict[str, float] = {}
        call_start = time.perf_counter()

        def progress(stage, _fraction, marks=marks):
            marks.setdefault(stage, time.perf_counter())

        outcome = ingest_bytes(db, collection, filename, data, progress=progress, settings=settings)
        call_end = time.perf_counter()
        if outcome.status != "added":
            raise SystemExit(f"ingest failed: {outcome.message}")
        chunks += outcome.chunks
        stages["checks"] += marks["parse"] - call_start
        stages["parse+chunk"] += marks["embed"] - marks["parse"]
        stages["embed"] += marks["store"] - marks["embed"]
        stages["store"] += marks["done"] - marks["store"]
        stages["after"] += call_end - marks["done"]
    return time.perf_counter() - started, stages, chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000, help="at least this many chunks (default 2000)")
    parser.add_argument("--docs", type=int, default=None, help="at most this many documents")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of each side (default 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="embedding batch size (default: settings.embed_batch_size)")
    parser.add_argument("--no-per-doc", action="store_true", help="skip side (a'), embedding one call per document")
    parser.add_argument("--profile", action="store_true", help="also run the pipeline once under cProfile and print the top functions")
    parser.add_argument("--data-dir", default=None, help="data folder to use and keep (default: a temporary one)")
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    args = parser.parse_args()

    settings = Settings(data_dir=data_dir(args.data_dir))
    if args.batch_size:
        settings = settings.model_copy(update={"embed_batch_size": args.batch_size})
    batch = settings.embed_batch_size
    db = open_database(settings)
    embedder = load_embedder(settings.embedding_model)
    files, per_doc = prepare(scifact_corpus(args.scifact), embedder, settings, args.chunks, args.docs)
    texts = [t for doc in per_doc for t in doc]
    print(f"machine: {machine()}")
    print(f"corpus: {len(files)} SciFact abstracts -> {len(texts)} chunks ({settings.chunk_tokens} tokens, overlap "
          f"{settings.chunk_overlap}), batch size {batch}, {args.repeats} repeats\n")

    # Warm up the model and every code path of the pipeline before timing anything.
    embedder.embed(texts[:batch], batch_size=batch)
    create_collection(db, "warmup", settings=settings)
    run_pipeline(db, "warmup", files[-5:], settings)

    times: dict[str, list[float]] = {"a": [], "a'": [], "b": []}
    stage_runs: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        # Alternate the order so that drift (another process, thermal) does not favour one side.
        order = ["a", "a'", "b"] if repeat % 2 == 0 else ["b", "a'", "a"]
        for side in order:
            if side == "a'" and args.no_per_doc:
                continue
            start = time.perf_counter()
            if side == "a":
                embedder.embed(texts, batch_size=batch)
            elif side == "a'":
                for doc_texts in per_doc:
                    embedder.embed(doc_texts, batch_size=batch)
            else:
                name = f"bench-{repeat}"
                create_collection(db, name, settings=settings)
                elapsed, stages, stored = run_pipeline(db, name, files, settings)
                assert stored == len(texts), (stored, len(texts))
                stage_runs.append(stages)
            times[side].append(time.perf_counter() - start)
            print(f"  repeat {repeat + 1}, side {side}: {times[side][-1]:.1f} s", flush=True)

    a, b = median(times["a"]), median(times["b"])
    real = sum(min(n + 2, int(embedder.model.get_max_seq_length())) for n in embedder.count_tokens(texts))
    across, per_file = padded_tokens(embedder, [texts], batch), padded_tokens(embedder, per_doc, batch)
    rows = [[f"(a) embedding alone, all chunks in batches of {batch}", f"{a:.1f}", f"{len(texts) / a:.1f}", "1.00",
             f"{across:,} ({across / real:.2f})"]]
    if times["a'"]:
        a1 = median(times["a'"])
        rows.append(["(a') embedding alone, one call per document", f"{a1:.1f}", f"{len(texts) / a1:.1f}", f"{a1 / a:.2f}",
                     f"{per_file:,} ({per_file / real:.2f})"])
    rows.append(["(b) whole pipeline, ingest_bytes per file", f"{b:.1f}", f"{len(texts) / b:.1f}", f"{b / a:.2f}",
                 f"{per_file:,} ({per_file / real:.2f})"])
    print("\n" + table(["side", "seconds (median)", "chunks/s", "time ratio vs (a)", "tokens computed, padding incl. (x real)"], rows))
    verdict = "meets" if b / a <= GOAL else "MISSES"
    print(f"\npipeline / embedding-alone time ratio: {b / a:.2f} ({verdict} the goal of <= {GOAL:.2f})")

    stage_rows = []
    for stage in stage_runs[0]:
        seconds = median([run[stage] for run in stage_runs])
        stage_rows.append([stage, f"{seconds:.1f}", f"{100 * seconds / b:.1f}%"])
    print("\nwhere the pipeline's time goes (median over repeats, from the progress callback):")
    print(table(["stage", "seconds", "share of (b)"], stage_rows))

    if args.profile:
        create_collection(db, "profile", settings=settings)
        profiler = cProfile.Profile()
        profiler.enable()
        run_pipeline(db, "profile", files, settings)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        print("\ncProfile of one pipeline run (cumulative time, top 35):")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
