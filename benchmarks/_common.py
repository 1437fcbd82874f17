"""Helpers shared by the benchmark scripts: a throwaway database, the SciFact files, timing and tables.

SciFact (CC BY-NC 2.0) is only read at run time from /work/shared/data/scifact (or --scifact);
nothing from it is copied into the repository.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEFAULT_SCIFACT = Path(os.environ.get("SCIFACT_DIR", "/work/shared/data/scifact"))


def data_dir(keep: str | None) -> Path:
    """`keep` (a --data-dir) if given, kept after the run; else a fresh folder under /tmp that is
    deleted at exit. The embedded Postgres runs as another user, so /tmp (world-traversable) is used.

    The deletion is registered before the database is opened: atexit runs handlers last-in
    first-out, so pgserver stops the server before the folder goes."""
    if keep:
        path = Path(keep).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="es-bench-", dir="/tmp"))
    path.chmod(0o755)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def scifact_corpus(folder: Path = DEFAULT_SCIFACT) -> list[dict]:
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def scifact_queries(folder: Path = DEFAULT_SCIFACT) -> dict[str, str]:
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        return {q["_id"]: q["text"] for q in map(json.loads, f)}


def scifact_test_qrels(folder: Path = DEFAULT_SCIFACT) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            query_id, doc_id, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(query_id, set()).add(doc_id)
    return qrels


def as_markdown(doc: dict) -> bytes:
    """A SciFact abstract as the Markdown file a user would upload: the title as heading."""
    return f"# {doc['title']}\n\n{doc['text']}".encode()


@contextmanager
def timed(results: list[float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    results.append(time.perf_counter() - start)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/benchmarks.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator, *(line(row) for row in cells[1:])])


def machine() -> str:
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = "?"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads {threads}, Python {platform.python_version()}"
