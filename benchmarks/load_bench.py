"""Load: concurrent sessions searching and asking while a 200-file upload and a training job run.

How sessions are driven, and why. Streamlit serves every browser session from one server process and
runs each session's script in a thread of that process; the model, the embedder and the database engine
are shared by all of them (`st.cache_resource`). What a browser adds is rendering on the user's own
machine and a websocket message per rerun. So a session is driven here as a thread of this process that
does what the page's script does on that rerun, with the same core functions and the pages' defaults:

  * Documents page, Search pressed (pages/documents.py): the collection picker and the Library tab's
    reads (every tab runs on a rerun: `list_collections`, `list_documents`, `document_chunks` of the
    chosen document), then `core.documents.search.search(db, query, collection=..., k=5, mode="hybrid")`.
  * Ask page, a question sent (pages/ask.py): `list_collections`, `list_adapters`, then
    `core.answers.rag.ask(db, question, collection=..., use_rag=True, adapter=NO_ADAPTER, model_id=...,
    load_in_4bit=..., max_new_tokens=..., temperature=..., top_p=...)` and its `stream()` read to the end
    (`st.write_stream` reads the whole answer, and the model is held until it ends).

Real browsers (Playwright pages, tests/e2e/e2e_harness.py) would put 20 chromium renderers on the same
2 cores as the server, which no deployment does (browsers run on the users' machines), and their script
threads would still call exactly these functions; the end-to-end tests already cover the websocket path.

The run, on a private data folder (its own embedded Postgres; SciFact read at run time, never copied):
  setup   SciFact abstracts ingested as Markdown into one collection until it holds `--chunks` (2,000, as
          generation_bench's idle figure), the abstracts that the asked SciFact test claims cite first;
          a small Q/A dataset written from other abstracts (prompt: a title, completion: its first
          sentences) and imported as the Training data page does.
  idle    1 session, `--idle-requests` rounds of (Documents search, Ask question).
  load    at once: (i) `ingest_files` of `--files` (200) further abstracts into the same collection, in a
          thread, with callables and a progress callback as the Documents page passes them; (ii) a
          training job queued with `python -m core train --preset "quick CPU check"` and run by the real
          worker (`python -m core worker --once`, each job in its own process); (iii) `--sessions` (20)
          sessions in a closed loop (`--think-seconds` between rounds, default 0: the worst case). Each
          session does at least `--requests` rounds and goes on while the upload or the training still
          runs, so both run under load to their end (bounded by `--max-minutes`).
  checks  no request raised; every question got an answer (text, or the "found nothing" reply) and every
          search passages; all uploaded files stored, each with as many chunks as its row says, and its
          first chunk found by a vector search for its own text; the job succeeded, its adapter is listed
          and answers a question.

Reported: p50/p95 of search() and of question -> first token (from calling `ask` to the first streamed
piece: retrieval, prompt, waiting for the model, prefill), idle vs under load, with ratios; the same for
the page's whole rerun and the full answer; upload and training durations. "Under load" is every request
that started while the upload or the training was still running; requests after both ended are shown
apart. One model serves every session and generation holds it for a whole answer (core/models: one
`generate` at a time per loaded model), so first-token latency under load is mostly the queue for the
model: about (sessions - 1) x (one answer's time) in a closed loop. Exit code 1 when a check fails.

    EXPERT_STUDIO_MODELS_DIR=/tmp/esmodels PYTHONPATH=. .venv/bin/python benchmarks/load_bench.py \\
        [--sessions 20] [--files 200] [--requests 3] [--max-new-tokens 32] [--chunks 2000]
    # a smoke run (a few minutes on the idle machine): every part, shrunk
    ... benchmarks/load_bench.py --sessions 3 --files 10 --requests 2 --idle-requests 4 --chunks 200 \\
        --max-new-tokens 16 --train-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    DEFAULT_SCIFACT,
    as_markdown,
    data_dir,
    machine,
    percentile,
    scifact_corpus,
    scifact_queries,
    scifact_test_qrels,
    table,
)

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "loadbench"
DATASET = "loadbench-qa"
ADAPTER = "loadbench-quick"
PRESET = "quick CPU check"
SEARCH_PASSAGES = 5  # the Documents page's Search tab: "Passages" slider default, first mode (hybrid)


# --- what a session records -----------------------------------------------------------------------------


@dataclass
class Sample:
    measure: str  # "search", "search rerun", "first token", "retrieval" (inside ask), "full answer"
    seconds: float
    busy: bool  # the upload or the training was running when the request started


@dataclass
class Recorder:
    """Everything the sessions measure, shared by their threads."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    asked: int = 0
    answered: int = 0  # with text, or the plain "found nothing" reply
    nothing_found: int = 0
    empty_answers: int = 0
    searches: int = 0
    searches_without_hits: int = 0
    rounds: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def sample(self, measure: str, seconds: float, busy: bool) -> None:
        with self.lock:
            self.samples.append(Sample(measure, seconds, busy))

    def error(self, where: str, error: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{where}: {type(error).__name__}: {str(error)[:300]}")

    def values(self, measure: str, busy: bool | None = None) -> list[float]:
        return [s.seconds for s in self.samples if s.measure == measure and (busy is None or s.busy == busy)]


# --- one session: the pages' reruns ---------------------------------------------------------------------


def documents_search(db, query: str, recorder: Recorder, busy: bool) -> None:
    """The Documents page's rerun when Search is pressed (every tab's script runs)."""
    from core.documents.library import document_chunks, list_collections, list_documents
    from core.documents.search import search

    started = time.perf_counter()
    list_collections(db)
    documents = list_documents(db, COLLECTION)
    if documents:
        document_chunks(db, documents[0].id, limit=100)
    called = time.perf_counter()
    hits = search(db, query, collection=COLLECTION, k=SEARCH_PASSAGES, mode="hybrid")
    ended = time.perf_counter()
    recorder.sample("search", ended - called, busy)
    recorder.sample("search rerun", ended - started, busy)
    recorder.add(searches=1, searches_without_hits=0 if hits else 1)


def ask_question(db, question: str, max_new_tokens: int, recorder: Recorder, busy: bool, adapter: str | None = None) -> str:
    """The Ask page's rerun when a question is sent: its reads, then `ask` streamed to the end."""
    from core.answers.rag import ask
    from core.config import get_settings
    from core.documents.library import list_collections
    from core.models import NO_ADAPTER
    from core.models.adapters import list_adapters

    settings = get_settings()
    list_collections(db)
    list_adapters(db)
    recorder.add(asked=1)
    called = time.perf_counter()
    answer = ask(db, question, collection=COLLECTION, use_rag=True, adapter=adapter or NO_ADAPTER,
                 model_id=settings.language_model, load_in_4bit=settings.load_in_4bit, max_new_tokens=max_new_tokens,
                 temperature=settings.temperature, top_p=settings.top_p)
    first = None
    for _ in answer.stream():
        if first is None:
            first = time.perf_counter() - called
    full = time.perf_counter() - called
    if answer.nothing_found:
        recorder.add(answered=1, nothing_found=1)  # a reply without the model: not a first-token figure
    elif answer.text.strip():
        recorder.sample("first token", first, busy)
        recorder.sample("retrieval", answer.timings.retrieval_seconds, busy)
        recorder.sample("full answer", full, busy)
        recorder.add(answered=1)
    else:
        recorder.add(empty_answers=1)
    return answer.text


def run_session(number: int, db, queries: list[str], *, rounds: int, max_new_tokens: int, recorder: Recorder,
                busy: Callable[[], bool], deadline: float, think_seconds: float) -> None:
    """Rounds of (Documents search, Ask question): at least `rounds`, and on while `busy()`, until `deadline`."""
    rng = random.Random(number)
    done = 0
    while time.monotonic() < deadline and (done < rounds or busy()):
        query = queries[(number * 17 + done) % len(queries)]
        try:
            documents_search(db, query, recorder, busy())
        except Exception as error:
            recorder.error(f"session {number} search", error)
        try:
            ask_question(db, query, max_new_tokens, recorder, busy())
        except Exception as error:
            recorder.error(f"session {number} ask", error)
        done += 1
        with recorder.lock:
            recorder.rounds[number] = done
        if think_seconds:
            time.sleep(rng.uniform(0, 2 * think_seconds))


def run_sessions(count: int, db, queries: list[str], **kwargs) -> float:
    """`count` sessions at once, each in its own thread as Streamlit runs them; the seconds until the last ends."""
    threads = [threading.Thread(target=run_session, args=(n, db, queries), kwargs=kwargs, name=f"session-{n}")
               for n in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# --- the background work: an upload and a training job ---------------------------------------------------


@dataclass
class Background:
    upload_started: float = 0.0
    upload_seconds: float | None = None
    outcomes: list = field(default_factory=list)
    upload_error: str | None = None
    training_started: float = 0.0
    training_seconds: float | None = None
    job_id: int | None = None
    job_status: str | None = None
    job_error: str | None = None
    worker_exit: int | None = None
    _upload_done: threading.Event = field(default_factory=threading.Event)
    _training_done: threading.Event = field(default_factory=threading.Event)

    def busy(self) -> bool:
        return not (self._upload_done.is_set() and self._training_done.is_set())

    def upload(self, db, files: list[tuple[str, bytes]]) -> None:
        """One upload of every file, as the Documents page passes it: file.getvalue callables, a progress bar each."""
        from core.documents.ingest import ingest_files

        progress = [0.0] * len(files)

        def report(index: int, stage: str, fraction: float) -> None:
            progress[index] = fraction

        self.upload_started = time.perf_counter()
        try:
            self.outcomes = ingest_files(db, COLLECTION, [(name, (lambda data=data: data)) for name, data in files],
                                         replace=False, progress=report)
        except Exception as error:
            self.upload_error = f"{type(error).__name__}: {error}"
        finally:
            self.upload_seconds = time.perf_counter() - self.upload_started
            self._upload_done.set()

    def train(self, db, logs: Path, deadline: float, steps: int | None) -> None:
        """Queue the job with the CLI, run it with the real worker, wait for its ending."""
        from core.jobs.queue import cancel_job, get_job

        self.training_started = time.perf_counter()
        worker = None
        try:
            command = [sys.executable, "-m", "core", "train", "--dataset", DATASET, "--adapter", ADAPTER, "--preset", PRESET,
                       "--json", *(["--max-steps", str(steps)] if steps else [])]
            queued = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
            if queued.returncode != 0:
                self.job_error = f"`python -m core train` exited {queued.returncode}: {queued.stderr.strip()[-500:]}"
                return
            self.job_id = json.loads(queued.stdout[queued.stdout.index("{"):])["id"]
            with open(logs / "loadbench-worker.log", "ab") as sink:
                worker = subprocess.Popen([sys.executable, "-m", "core", "worker", "--once"], cwd=REPO, stdout=sink,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            job = get_job(db, self.job_id)
            while not job.finished and time.monotonic() < deadline:
                time.sleep(1.0)
                job = get_job(db, self.job_id)
            if not job.finished:
                cancel_job(db, self.job_id)
                self.job_error = "did not finish before --max-minutes ran out (cancelled)"
            self.job_status = get_job(db, self.job_id).status
            self.job_error = self.job_error or job.error
            self.worker_exit = worker.wait(timeout=120)
        except Exception as error:
            self.job_error = f"{type(error).__name__}: {error}"
        finally:
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)
            self.training_seconds = time.perf_counter() - self.training_started
            self._training_done.set()


# --- setup ----------------------------------------------------------------------------------------------


def first_sentences(text: str, limit: int = 300) -> str:
    cut = text[:limit]
    return cut[: cut.rfind(". ") + 1] if ". " in cut else cut


def build_collection(db, corpus: list[dict], queries: dict[str, str], qrels: dict[str, set[str]], chunks: int,
                     max_queries: int) -> tuple[list[str], set[str], int, float]:
    """Ingest abstracts until the collection holds `chunks`; the claims whose cited abstracts made it in."""
    from core.documents.ingest import ingest_files
    from core.documents.library import create_collection

    by_id = {d["_id"]: d for d in corpus}
    claims = [q for q in qrels if q in queries][:max_queries]
    wanted = [d for q in claims for d in sorted(qrels[q]) if d in by_id]
    order = list(dict.fromkeys(wanted + [d["_id"] for d in corpus]))
    create_collection(db, COLLECTION)
    started, stored, ingested = time.perf_counter(), 0, []
    for first in range(0, len(order), 50):  # 50 abstracts per call (~110 chunks): stops near `chunks`
        block = order[first : first + 50]
        outcomes = ingest_files(db, COLLECTION, [(f"{d}.md", as_markdown(by_id[d])) for d in block])
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise SystemExit(f"setup: {len(failed)} abstracts failed to ingest, e.g. {failed[0].message}")
        stored += sum(o.chunks for o in outcomes)
        ingested += block
        if stored >= chunks:
            break
    seconds = time.perf_counter() - started
    inside = set(ingested)
    asked = [queries[q] for q in claims if qrels[q] & inside]
    print(f"setup: {len(ingested)} abstracts -> {stored} chunks in {seconds:.0f} s "
          f"({len(ingested) / seconds:.1f} files/s, no sessions); {len(asked)} SciFact test claims to ask", flush=True)
    return asked, inside, stored, len(ingested) / seconds


def import_training_data(db, corpus: list[dict], taken: set[str], examples: int) -> None:
    """A small prompt/completion dataset from abstracts outside the collection, imported as the page does."""
    from core.datasets.preview import preview_dataset
    from core.datasets.store import save_dataset

    rows = [{"prompt": f"What does the study \"{d['title']}\" report?", "completion": first_sentences(d["text"])}
            for d in corpus if d["_id"] not in taken and d["text"]][:examples]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    info = save_dataset(db, DATASET, preview_dataset(f"{DATASET}.jsonl", data), skip_bad_rows=True)
    print(f"setup: dataset {DATASET!r}: {info.train_count} train, {info.validation_count} validation examples", flush=True)


# --- checks ---------------------------------------------------------------------------------------------


def check_upload(db, background: Background, names: list[str]) -> list[tuple[str, bool, str]]:
    from core.documents.library import document_chunks, list_documents
    from core.documents.search import search

    checks = []
    statuses: dict[str, int] = {}
    for outcome in background.outcomes:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    all_added = background.upload_error is None and statuses.get("added", 0) == len(names) == len(background.outcomes)
    checks.append(("upload: every file added", all_added,
                   background.upload_error or ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))))
    stored = {d.filename: d for d in list_documents(db, COLLECTION)}
    missing = [n for n in names if n not in stored]
    short, found = [], 0
    for name in names:
        if name not in stored:
            continue
        document = stored[name]
        chunks = document_chunks(db, document.id)
        if not chunks or len(chunks) != document.chunk_count:
            short.append(f"{name}: {len(chunks)} chunks stored, {document.chunk_count} recorded")
            continue
        hits = search(db, chunks[0].text, collection=COLLECTION, k=3, mode="vector")
        found += any(h.chunk_id == chunks[0].id for h in hits)
    present = len(names) - len(missing)
    checks.append(("upload: every file stored with all its chunks", not missing and not short,
                   f"{present}/{len(names)} stored" + (f"; {short[0]}" if short else "")
                   + (f"; missing e.g. {missing[0]}" if missing else "")))
    checks.append(("upload: each file's first chunk found by a vector search for its text", found == len(names),
                   f"{found}/{len(names)}"))
    return checks


def check_training(db, background: Background, max_new_tokens: int) -> list[tuple[str, bool, str]]:
    from core.models.adapters import list_adapters

    succeeded = background.job_status == "succeeded"
    checks = [("training: job succeeded", succeeded,
               f"job {background.job_id}: {background.job_status}" + (f" — {background.job_error[:300]}" if background.job_error else ""))]
    listed = ADAPTER in [a.name for a in list_adapters(db)]
    checks.append(("training: adapter listed", listed, ADAPTER if listed else f"{ADAPTER} not in list_adapters"))
    if listed:
        scratch = Recorder()
        try:
            text = ask_question(db, "What is a randomized controlled trial?", max_new_tokens, scratch, False, adapter=ADAPTER)
            checks.append(("training: the adapter answers on the Ask page", scratch.answered == 1, f"{text[:60]!r}"))
        except Exception as error:
            checks.append(("training: the adapter answers on the Ask page", False, f"{type(error).__name__}: {error}"))
    return checks


def check_requests(recorder: Recorder, sessions: int, rounds: int) -> list[tuple[str, bool, str]]:
    short = [n for n in range(sessions) if recorder.rounds.get(n, 0) < rounds]
    return [
        ("requests: none raised", not recorder.errors, f"{len(recorder.errors)} errors" + (f", first: {recorder.errors[0]}"
                                                                                             if recorder.errors else "")),
        ("requests: every question answered", recorder.answered == recorder.asked,
         f"{recorder.answered}/{recorder.asked} ({recorder.nothing_found} 'found nothing', {recorder.empty_answers} empty)"),
        ("requests: every search returned passages", recorder.searches_without_hits == 0,
         f"{recorder.searches - recorder.searches_without_hits}/{recorder.searches}"),
        ("requests: every session did its rounds", not short,
         f"min {min(recorder.rounds.values(), default=0)}, max {max(recorder.rounds.values(), default=0)} rounds per session"),
    ]


# --- report ---------------------------------------------------------------------------------------------


def latency_rows(idle: Recorder, load: Recorder, busy: bool) -> list[list[str]]:
    rows = []
    for measure, label in (("search", "search() (embed query + hybrid SQL, k=5)"),
                           ("search rerun", "Documents page rerun (its reads + search)"),
                           ("first token", "question -> first token (ask + stream)"),
                           ("retrieval", "  of which retrieval (embed, hybrid search, fit passages)"),
                           ("full answer", "question -> full answer")):
        quiet, loaded = idle.values(measure), load.values(measure, busy)
        cells = [label, str(len(loaded))]
        for q in (50, 95):
            a, b = percentile(quiet, q), percentile(loaded, q)
            cells += [f"{a * 1000:,.0f}", f"{b * 1000:,.0f}"]
        cells += [f"{percentile(loaded, 50) / percentile(quiet, 50):.1f}x", f"{percentile(loaded, 95) / percentile(quiet, 95):.1f}x"]
        rows.append(cells)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions under load (default 20)")
    parser.add_argument("--files", type=int, default=200, help="files in the upload that runs under load (default 200)")
    parser.add_argument("--requests", type=int, default=3,
                        help="rounds (a search and a question) each session does at least (default 3); it goes on while "
                             "the upload or the training runs")
    parser.add_argument("--idle-requests", type=int, default=20, help="rounds of the single idle session (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest answer, in tokens (default 32)")
    parser.add_argument("--think-seconds", type=float, default=0.0,
                        help="mean pause between a session's rounds (uniform 0..2x; default 0: the worst case)")
    parser.add_argument("--chunks", type=int, default=2000, help="chunks in the collection before the upload (default 2000)")
    parser.add_argument("--train-examples", type=int, default=40, help="examples in the training dataset (default 40)")
    parser.add_argument("--train-steps", type=int, help=f"training steps (default: the {PRESET!r} preset's 10)")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="bound on the load phase (default 30)")
    parser.add_argument("--data-dir", help="keep the data folder here (default: a throwaway folder under /tmp)")
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    args = parser.parse_args()

    folder = data_dir(args.data_dir)
    os.environ["EXPERT_STUDIO_DATA_DIR"] = str(folder)  # this process, the CLI and the worker share it
    from core.config import get_settings
    from core.db import open_database
    from core.documents.embeddings import load_embedder
    from core.models import load_model

    settings = get_settings()
    db = open_database(settings)
    started = time.perf_counter()
    loaded = load_model(settings.language_model)
    load_embedder(settings.embedding_model)
    print(f"machine: {machine()}\ndata: {folder} ({db.description})\nmodel: {loaded.description} "
          f"(loaded in {time.perf_counter() - started:.1f} s)", flush=True)

    corpus = scifact_corpus(args.scifact)
    queries, inside, chunks, idle_files_per_second = build_collection(
        db, corpus, scifact_queries(args.scifact), scifact_test_qrels(args.scifact), args.chunks, max_queries=300)
    import_training_data(db, corpus, inside, args.train_examples)
    by_id = {d["_id"]: d for d in corpus}
    upload_ids = [d["_id"] for d in corpus if d["_id"] not in inside][: args.files]
    upload = [(f"{d}.md", as_markdown(by_id[d])) for d in upload_ids]

    warm = Recorder()
    documents_search(db, queries[0], warm, False)
    ask_question(db, queries[0], args.max_new_tokens, warm, False)

    # Phase 1: one session on the idle app.
    print(f"\nidle: 1 session, {args.idle_requests} rounds; load average {os.getloadavg()[0]:.1f}", flush=True)
    idle = Recorder()
    idle_seconds = run_sessions(1, db, queries, rounds=args.idle_requests, max_new_tokens=args.max_new_tokens,
                                recorder=idle, busy=lambda: False, deadline=float("inf"), think_seconds=0.0)

    # Phase 2: the upload and the training job start, and the sessions with them.
    print(f"load: {args.sessions} sessions x >= {args.requests} rounds, upload of {len(upload)} files, "
          f"training job ({PRESET}); load average {os.getloadavg()[0]:.1f}", flush=True)
    deadline = time.monotonic() + args.max_minutes * 60
    background = Background()
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers = [threading.Thread(target=background.upload, args=(db, upload), name="upload"),
               threading.Thread(target=background.train, args=(db, logs, deadline + 600, args.train_steps),
                                name="training")]
    for thread in workers:
        thread.start()
    load = Recorder()
    load_seconds = run_sessions(args.sessions, db, queries, rounds=args.requests, max_new_tokens=args.max_new_tokens,
                                recorder=load, busy=background.busy, deadline=deadline, think_seconds=args.think_seconds)
    for thread in workers:
        thread.join()
    load_average = os.getloadavg()[0]

    # Report.
    print(f"\n## {args.sessions} sessions searching and asking during a {len(upload)}-file upload and a training job\n")
    print(f"idle: 1 session, {idle_seconds:.0f} s; load: {args.sessions} sessions, {load_seconds:.0f} s (load average at the "
          f"end {load_average:.1f}); max_new_tokens={args.max_new_tokens}, think time {args.think_seconds:g} s, "
          f"collection of {chunks:,} chunks before the upload\n")
    headers = ["ms", "n (load)", "idle p50", "load p50", "idle p95", "load p95", "p50 ratio", "p95 ratio"]
    print(table(headers, latency_rows(idle, load, busy=True)))
    after = load.values("first token", busy=False)
    if after:
        print(f"\nafter the upload and the training ended ({args.sessions} sessions only, {len(after)} questions):")
        print(table(headers, latency_rows(idle, load, busy=False)))
    asks_idle = len(idle.values("first token")) / idle_seconds * 60
    asks_load = len(load.values("first token")) / load_seconds * 60
    per_file_idle, per_file_load = 1 / idle_files_per_second, background.upload_seconds / max(len(upload), 1)
    print()
    print(table(["background work, throughput", "idle", "under load", "load / idle"], [
        ["upload, seconds per file", f"{per_file_idle:.2f} (setup's ingestion, no sessions)",
         f"{per_file_load:.2f} ({len(upload)} files in {background.upload_seconds:.0f} s)", f"{per_file_load / per_file_idle:.1f}x"],
        ["training job, queued to finished (s)", "—", f"{background.training_seconds:.0f}"
         + (f" ({args.train_steps} steps)" if args.train_steps else ""), ""],
        ["answers per minute, all sessions", f"{asks_idle:.1f}", f"{asks_load:.1f}", f"{asks_load / asks_idle:.2f}x"],
    ]))

    checks = check_requests(idle, 1, args.idle_requests) + check_requests(load, args.sessions, args.requests)
    checks = [(("idle " if i < 4 else "load ") + name, ok, detail) for i, (name, ok, detail) in enumerate(checks)]
    checks += check_upload(db, background, [name for name, _ in upload])
    checks += check_training(db, background, args.max_new_tokens)
    print()
    print(table(["check", "result", "detail"], [[name, "ok" if ok else "FAILED", detail] for name, ok, detail in checks]))
    for error in load.errors[:10] + idle.errors[:10]:
        print(f"  {error}")
    failed = [name for name, ok, _ in checks if not ok]
    print(f"\n{'all checks passed' if not failed else 'FAILED: ' + '; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
