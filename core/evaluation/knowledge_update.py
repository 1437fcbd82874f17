"""The knowledge-update check: a document is replaced by an edited version, and the exam's questions
about it are asked again of RAG (and of the fine-tuned model, when an adapter is given).

RAG reads the new version at once; an adapter keeps what it learnt from the old one until it is
trained again. The new run records the old and the new reference answers, and its summary says,
per variant, how close the answers are to each and (RAG) how often a passage given to the model
holds the new reference (core.evaluation.results.knowledge_update_summary).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from core.config import Settings, get_settings
from core.db import Database
from core.documents.ingest import ingest_bytes
from core.documents.library import find_documents
from core.evaluation.results import EvaluationError, get_run
from core.evaluation.run import DEFAULT_BATCH_SIZE, exam_info, plan_evaluation, save_evaluation
from core.jobs.queue import Job


@dataclass(frozen=True)
class KnowledgeUpdate:
    run_id: int
    job: Job
    document_id: int  # the new version's
    question_ids: list[int]
    message: str


def _questions_about(db: Database, exam_id: int, filename: str, document_ids: list[int]) -> dict[int, str]:
    """question id → reference answer, for the exam's questions about the document."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, reference_answer FROM exam_questions WHERE exam_id = :e AND NOT out_of_scope "
                 "AND (document_id = ANY(:ids) OR source_document = :f) ORDER BY ordinal"),
            {"e": exam_id, "ids": document_ids, "f": filename},
        ).all()
    return {row.id: row.reference_answer for row in rows}


def knowledge_update_check(
    db: Database,
    *,
    filename: str,
    data: bytes,
    exam: str | None = None,
    run_id: int | None = None,
    adapter: str | None = None,
    model: str | None = None,
    collection: str | None = None,
    new_references: dict[int, str] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: Settings | None = None,
) -> KnowledgeUpdate:
    """Replace `filename` in the collection with `data`, then queue an evaluation of its questions
    with "rag" (and "ft" with an adapter). With `run_id` the exam, model, adapter, collection and
    answer length come from that earlier run, which the new one is compared with.

    `new_references`: question id → the answer the edited document now gives; the run scores
    against these (the exam itself is not changed). Every check runs before the document is replaced.
    """
    settings = settings or get_settings()
    before = get_run(db, run_id) if run_id is not None else None
    if before is not None:
        exam = exam or before.exam
        model = model or before.model
        adapter = adapter or before.adapter
        collection = collection or before.collection
        max_new_tokens = max_new_tokens or before.settings.get("max_new_tokens")
    if not exam:
        raise EvaluationError("Name the exam (or an earlier run) whose questions about the document to ask again.")
    info = exam_info(db, exam)
    collection = collection or info.collection
    if not collection:
        raise EvaluationError(f"Exam {info.name!r} names no collection: choose the one that holds {filename!r}.")
    old_documents = find_documents(db, collection, filename)
    if not old_documents:
        raise EvaluationError(f"{filename!r} is not in the collection {collection!r}: the check replaces a document "
                              "that is there, with the same file name.")
    questions = _questions_about(db, info.id, filename, [d.id for d in old_documents])
    if not questions:
        raise EvaluationError(f"Exam {info.name!r} has no questions about {filename!r}.")
    unknown = set(new_references or {}) - set(questions)
    if unknown:
        raise EvaluationError(f"Questions {sorted(unknown)} are not questions of this exam about {filename!r}.")
    variants = ["rag", "ft"] if adapter else ["rag"]
    update = {"document": filename, "old_document_ids": [d.id for d in old_documents], "before_run": run_id,
              "old_references": {str(q): questions[q] for q in questions}}
    plan = plan_evaluation(
        db, exam=info.name, variants=variants, model=model, adapter=adapter, collection=collection,
        max_new_tokens=max_new_tokens, batch_size=batch_size, question_ids=list(questions),
        reference_overrides=new_references, extra_settings={"knowledge_update": update}, settings=settings,
    )

    outcome = ingest_bytes(db, collection, filename, data, replace=True, settings=settings)
    if outcome.status != "replaced" or outcome.document_id is None:
        raise EvaluationError(f"The document was not replaced: {outcome.message}")
    # The old version's rows are gone, and with them the questions' links (ON DELETE SET NULL): link
    # them to the new version. Their chunk is found again through their source passage.
    with db.engine.begin() as connection:
        connection.execute(
            text("UPDATE exam_questions SET document_id = :d WHERE id = ANY(:ids) AND document_id IS NULL"),
            {"d": outcome.document_id, "ids": list(questions)},
        )
    plan.settings["knowledge_update"]["new_document_id"] = outcome.document_id
    new_run, job = save_evaluation(db, plan)
    return KnowledgeUpdate(new_run, job, outcome.document_id, list(questions),
                           f"{outcome.message} Asking its {len(questions)} questions again with {', '.join(variants)}: run {new_run}.")
