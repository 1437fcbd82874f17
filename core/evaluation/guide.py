"""The guided path from a collection to the advisor's verdict, and where a collection stands on it.

    documents → an exam (held-out documents) → base and RAG scored → an adapter fine-tuned on the
    rest → FT and RAG+FT scored → the advisor's verdict

Each step's state comes from the tables alone (collections, exams, eval_runs, jobs, datasets,
artifacts), never from the modules that do the work, so the Home page shows it without knowing
their functions, and a step started in another session or from the command line shows too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text

from core.db import Database
from core.documents.library import get_collection

State = Literal["done", "running", "to do"]
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    state: State
    detail: str  # what is there, or what to do
    page: str  # the page that does it, e.g. "pages/exams.py"
    command: str  # the same from the command line


def _collection_row(db: Database, name: str):
    get_collection(db, name)  # "No collection named ..." with the usual message
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT c.id, count(d.id) AS documents FROM collections c LEFT JOIN documents d ON d.collection_id = c.id "
                 "WHERE c.name = :n GROUP BY c.id"),
            {"n": name},
        ).one()


def _exams(db: Database, collection_id: int) -> list:
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT e.id, e.name, count(q.id) AS questions FROM exams e "
                 "LEFT JOIN exam_questions q ON q.exam_id = e.id WHERE e.collection_id = :c "
                 "GROUP BY e.id ORDER BY e.created_at DESC, e.id DESC"),
            {"c": collection_id},
        ).all()


def _exam_jobs(db: Database, collection: str) -> list:
    """Jobs drafting an exam from the collection, while they are queued or running."""
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT id, kind FROM jobs WHERE status IN ('queued', 'running') AND kind LIKE '%exam%' "
                 "AND params ->> 'collection' = :n ORDER BY id DESC"),
            {"n": collection},
        ).all()


def _runs(db: Database, collection_id: int, exam_names: list[str]) -> list:
    """Evaluation runs on the collection's exams (newest first), and evaluation jobs not yet started on one."""
    with db.engine.connect() as connection:
        runs = connection.execute(
            text("""
                SELECT r.id, r.variants, r.adapter, r.finished_at IS NOT NULL OR j.status = 'succeeded' AS finished,
                       j.status IN ('queued', 'running') AS active, e.name AS exam
                FROM eval_runs r JOIN exams e ON e.id = r.exam_id LEFT JOIN jobs j ON j.id = r.job_id
                WHERE e.collection_id = :c ORDER BY r.created_at DESC, r.id DESC
            """),
            {"c": collection_id},
        ).all()
        waiting = connection.execute(
            text("""
                SELECT j.id, j.params -> 'variants' AS variants FROM jobs j
                WHERE j.kind = 'evaluate' AND j.status IN ('queued', 'running')
                  AND coalesce(j.params ->> 'exam', j.params ->> 'exam_name') = ANY(:names)
                  AND NOT EXISTS (SELECT 1 FROM eval_runs r WHERE r.job_id = j.id)
            """),
            {"names": exam_names},
        ).all()
    return [*runs, *waiting]


def _training(db: Database, collection_id: int) -> list:
    """Fine-tuning jobs on datasets generated from the collection, newest first, with their adapter if it exists."""
    with db.engine.connect() as connection:
        return connection.execute(
            text("""
                SELECT j.id, j.status, j.params ->> 'adapter_name' AS adapter, d.name AS dataset,
                       EXISTS (SELECT 1 FROM artifacts a WHERE a.kind = 'adapter' AND a.job_id = j.id) AS published
                FROM jobs j JOIN datasets d
                  ON d.name = j.params ->> 'dataset_name' OR d.id::text = j.params ->> 'dataset_id'
                WHERE j.kind = 'train' AND d.collection_id = :c
                ORDER BY j.id DESC
            """),
            {"c": collection_id},
        ).all()


def _scoring_step(key: str, title: str, wanted: tuple[str, ...], runs: list, exam: str | None, adapter: str | None) -> Step:
    finished = [r for r in runs if getattr(r, "finished", False)]
    covered = {v for r in finished for v in r.variants}
    variants = ",".join(wanted)
    flags = f" --adapter {adapter or 'ADAPTER'}" if "ft" in wanted else ""
    command = f"python -m core eval --exam {exam or 'EXAM'} --variants {variants}{flags}"
    if set(wanted) <= covered:
        ids = ", ".join(str(r.id) for r in finished if set(r.variants) & set(wanted))
        return Step(key, title, "done", f"Scored in run {ids}.", "pages/evaluation.py", command)
    running = [r for r in runs if getattr(r, "active", True) and set(r.variants or wanted) & set(wanted)]
    if running:
        return Step(key, title, "running", "An evaluation job is scoring them now.", "pages/evaluation.py", command)
    if exam is None:
        return Step(key, title, "to do", "Needs an exam first.", "pages/evaluation.py", command)
    return Step(key, title, "to do", f"Score {' and '.join(wanted)} on the exam {exam!r}.", "pages/evaluation.py", command)


def guided_path_state(db: Database, collection: str) -> list[Step]:
    """Each step of the guided path for `collection`, with its state (done / running / to do)."""
    row = _collection_row(db, collection)
    steps = []
    documents = int(row.documents)
    steps.append(Step(
        "documents", "Pick a collection with documents", "done" if documents else "to do",
        f"{documents} document{'s' if documents != 1 else ''} in {collection!r}." if documents
        else f"{collection!r} has no documents yet: upload some.",
        "pages/documents.py", f"python -m core ingest PATH --collection {collection}",
    ))

    exams = [e for e in _exams(db, row.id) if e.questions]
    exam = exams[0].name if exams else None
    if exams:
        steps.append(Step("exam", "Draft an exam from it (held-out documents)", "done",
                          f"Exam {exam!r} with {exams[0].questions} questions.", "pages/exams.py",
                          f"python -m core exams show {exam}"))
    else:
        drafting = _exam_jobs(db, collection)
        steps.append(Step("exam", "Draft an exam from it (held-out documents)", "running" if drafting else "to do",
                          f"Job {drafting[0].id} is drafting one." if drafting else
                          "Questions with reference answers from a few documents kept out of training.",
                          "pages/exams.py", f"python -m core exams generate --collection {collection}"))

    runs = _runs(db, row.id, [e.name for e in exams])
    training = _training(db, row.id)
    adapter = next((t.adapter for t in training if t.published), None)
    steps.append(_scoring_step("score-base-rag", "Score base and RAG", ("base", "rag"), runs, exam, None))

    if adapter:
        job = next(t for t in training if t.published)
        steps.append(Step("fine-tune", "Fine-tune on the rest", "done",
                          f"Adapter {adapter!r} (job {job.id}, trained on {job.dataset!r}).", "pages/finetune.py",
                          "python -m core adapters list"))
    else:
        active = next((t for t in training if t.status in ACTIVE), None)
        failed = next((t for t in training if t.status in ("failed", "cancelled")), None)
        detail = (f"Job {active.id} is training {active.adapter!r}." if active else
                  f"Job {failed.id} {failed.status}: resume it or start another." if failed else
                  "Generate training data from the collection (the exam's documents are left out), then fine-tune on it.")
        steps.append(Step("fine-tune", "Fine-tune on the rest", "running" if active else "to do", detail,
                          "pages/finetune.py", "python -m core train --dataset NAME --adapter NAME"))

    steps.append(_scoring_step("score-ft", "Score FT and RAG+FT", ("ft", "rag+ft"), runs, exam, adapter))
    ready = steps[2].state == "done" and steps[4].state == "done"
    steps.append(Step("advisor", "See the advisor's verdict", "done" if ready else "to do",
                      "Both scorings are in: the advisor weighs them." if ready else
                      "The advisor answers from your answers to its questions until the scores are in.",
                      "pages/advisor.py", f"python -m core advise --exam {exam or 'EXAM'}"))
    return steps
