"""Hostile files and the parser sandbox: what does each bad file cost, and what does the sandbox
cost a normal upload?

Part 1 parses every case of tests/test_hostile_files.py (the same generators) in the shared
sandbox with the default limits, and prints one row per file: refused or parsed, the reason, the
parse time and the parser process's peak memory; then the count, the worst time and the worst
peak memory. No database is needed: this is the parse alone (the test suite runs the same files
through the whole ingestion into Postgres).

Part 2 measures the sandbox's overhead on ordinary files: `--docs` SciFact abstracts as Markdown
(or generated notes when SciFact is not there) parsed in this process and in the sandbox,
interleaved block by block, and sets the difference per file beside the pipeline's per-file time
from docs/benchmarks.md (62.0 s for 901 files), the figure the sandbox must not add more than a few
percent to.

    PYTHONPATH=. .venv/bin/python benchmarks/hostile_files_bench.py [--docs 900] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import DEFAULT_SCIFACT, as_markdown, machine, median, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_hostile_files import CASES  # noqa: E402  (the generators live with the tests)

from core.config import Settings  # noqa: E402
from core.documents.errors import IngestError  # noqa: E402
from core.documents.parsing import parse_document, safe_filename  # noqa: E402
from core.documents.sandbox import parse_untrusted, shared_sandbox  # noqa: E402

PIPELINE_SECONDS_PER_FILE = 62.0 / 901  # docs/benchmarks.md, Ingestion, side (b)
MB = 2**20


def hostile(settings: Settings, only: str | None) -> None:
    rows, worst_time, worst_memory = [], None, None
    for case in CASES:
        if only and only not in case.filename:
            continue
        data = case.make()
        try:
            name = safe_filename(case.filename)
        except IngestError as error:
            rows.append([case.shown, f"{len(data):,}", "refused", str(error)[len(case.shown) + 2 :][:70], "-", "-"])
            continue
        try:
            parsed = parse_untrusted(name, data, settings)
            outcome, detail = "parsed", f"{len(parsed.sections)} sections, {len(parsed.text):,} characters"
        except IngestError as error:
            outcome, detail = "refused", error.problem[:70]
        stats = shared_sandbox().last
        rows.append([case.shown[:40], f"{len(data):,}", outcome, detail, f"{stats.seconds:.2f}",
                     f"{stats.peak_rss_bytes / MB:.0f}" if stats.peak_rss_bytes else "killed"])
        if worst_time is None or stats.seconds > worst_time[0]:
            worst_time = (stats.seconds, case.shown)
        if stats.peak_rss_bytes and (worst_memory is None or stats.peak_rss_bytes > worst_memory[0]):
            worst_memory = (stats.peak_rss_bytes, case.shown)
    print(table(["file", "bytes", "outcome", "why / what", "parse s", "peak MB"], rows))
    refused = sum(row[2] == "refused" for row in rows)
    print(f"\n{len(rows)} hostile files: {refused} refused, {len(rows) - refused} parsed.")
    if worst_time:
        print(f"Worst parse time: {worst_time[0]:.2f} s ({worst_time[1]!r}); limit {settings.parse_timeout_s:g} s.")
    if worst_memory:
        print(f"Worst peak memory of the parser process: {worst_memory[0] / MB:.0f} MB ({worst_memory[1]!r}); "
              f"limit {settings.parse_memory_mb} MB on top of what the process maps before the parse.")


def overhead(settings: Settings, count: int, repeats: int, block: int = 50) -> None:
    if (DEFAULT_SCIFACT / "corpus.jsonl").exists():
        from _common import scifact_corpus

        files = [(f"{doc['_id']}.md", as_markdown(doc)) for doc in scifact_corpus()[:count]]
    else:
        files = [(f"note-{n}.md", f"# Note {n}\n\n".encode() + b"Pumps need priming before the first start. " * 40)
                 for n in range(count)]
    shared_sandbox().close()
    started = time.perf_counter()
    parse_untrusted("warm-up.md", b"# Warm\n\nup", settings)
    startup = time.perf_counter() - started
    sides = {"in-process": lambda n, d: parse_document(n, d), "sandbox": lambda n, d: parse_untrusted(n, d, settings)}
    totals: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        spent = dict.fromkeys(sides, 0.0)
        for offset in range(0, len(files), block):  # interleaved, so load from other processes hits both sides
            order = list(sides) if (offset // block) % 2 == 0 else list(reversed(sides))
            for side in order:
                began = time.perf_counter()
                for name, data in files[offset : offset + block]:
                    sides[side](name, data)
                spent[side] += time.perf_counter() - began
        for side, seconds in spent.items():
            totals[side].append(seconds)
    in_process, in_sandbox = median(totals["in-process"]), median(totals["sandbox"])
    per_file = (in_sandbox - in_process) / len(files)
    print()
    print(table(
        ["side", "files", f"seconds (median of {repeats})", "ms per file"],
        [["parse in this process", len(files), f"{in_process:.2f}", f"{in_process / len(files) * 1000:.2f}"],
         ["parse in the sandbox", len(files), f"{in_sandbox:.2f}", f"{in_sandbox / len(files) * 1000:.2f}"]],
    ))
    print(f"\nSandbox overhead: {per_file * 1000:.2f} ms per file = {per_file / PIPELINE_SECONDS_PER_FILE:.1%} of the "
          f"pipeline's {PIPELINE_SECONDS_PER_FILE * 1000:.0f} ms per file (docs/benchmarks.md). Once per process: "
          f"starting the parser process {startup:.2f} s. Load average now: {os.getloadavg()[0]:.1f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=900, help="ordinary files for the overhead measurement (0: skip)")
    parser.add_argument("--only", help="only the hostile cases whose name contains this")
    parser.add_argument("--overhead-only", action="store_true", help="skip the hostile files")
    parser.add_argument("--repeats", type=int, default=3, help="overhead: passes over the files; the median is reported")
    args = parser.parse_args()
    settings = Settings()
    print(f"Machine: {machine()}\n")
    if not args.overhead_only:
        shared_sandbox().measure_memory = True
        hostile(settings, args.only)
        shared_sandbox().measure_memory = False  # as the app runs it
    if args.docs and not args.only:
        overhead(settings, args.docs, args.repeats)


if __name__ == "__main__":
    main()
