"""python -m core.evaluation.exam_job --job ID: an exam drafted from a collection's held-out documents,
as a job of its own process (kind "generate-exam").

`submit_generate_exam` makes every check that can fail fast (the name is free, the settings, the
collection has documents, the held-out documents exist, the model is on this machine) and fixes
which documents are held out, then queues the job; a worker runs `run`. A cancel stops it at the
next batch, before anything is saved: the exam appears whole or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from core.config import Settings, get_settings
from core.datasets.generation import DEFAULT_QA_NEW_TOKENS
from core.db import Database
from core.evaluation.exams import (
    DEFAULT_EXAM_QUESTIONS,
    DEFAULT_HELDOUT_FRACTION,
    check_generation,
    choose_heldout_documents,
    ensure_exam_name_free,
    generate_exam,
)
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.registry import check_model_available

KIND = "generate-exam"


class GenerateExamParams(BaseModel):
    """A generation job's parameters as stored in its row (checked before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    exam_name: str
    collection: str
    model_id: str
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    heldout_document_ids: list[int] | None = None  # fixed when queued: explicit, or drawn with the seed
    explicit_documents: bool = False  # the user named them (the fraction played no part)
    questions: int = DEFAULT_EXAM_QUESTIONS
    out_of_scope: int = 0
    seed: int = 0
    max_new_tokens: int = DEFAULT_QA_NEW_TOKENS


def submit_generate_exam(
    db: Database,
    *,
    name: str,
    collection: str,
    model_id: str | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    heldout_documents: Sequence[int | str] | None = None,
    questions: int = DEFAULT_EXAM_QUESTIONS,
    out_of_scope: int = 0,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_QA_NEW_TOKENS,
    settings: Settings | None = None,
) -> Job:
    """Check everything that can fail fast, choose the held-out documents, then queue the generation
    (one per exam name)."""
    settings = settings or get_settings()
    name = ensure_exam_name_free(db, name)
    check_generation(heldout_fraction=heldout_fraction, questions=questions, out_of_scope=out_of_scope,
                     max_new_tokens=max_new_tokens)
    heldout = choose_heldout_documents(db, collection, fraction=heldout_fraction, seed=seed, documents=heldout_documents)
    model_id = _absolute_if_folder(model_id or settings.language_model)
    check_model_available(model_id, settings)
    params = GenerateExamParams(exam_name=name, collection=collection, model_id=model_id, heldout_fraction=heldout_fraction,
                                heldout_document_ids=[d.id for d in heldout], explicit_documents=bool(heldout_documents),
                                questions=questions, out_of_scope=out_of_scope, seed=seed, max_new_tokens=max_new_tokens)
    held = ", ".join(d.filename for d in heldout[:3]) + (" …" if len(heldout) > 3 else "")
    return create_job(db, kind=KIND, params=params, title=f"Exam {name} from {collection} ({held})", unique_key="exam_name")


def _absolute_if_folder(model_id: str) -> str:
    """A relative model folder means the caller's folder; the job's process runs elsewhere."""
    path = Path(model_id).expanduser()
    return str(path.resolve()) if path.is_dir() else model_id


def run(context: JobContext) -> dict:
    """The job's entry point: generate, save in one transaction, return what was saved."""
    p = GenerateExamParams.model_validate(context.job.params)
    print(f"Drafting exam {p.exam_name!r} by {p.model_id} from {len(p.heldout_document_ids or [])} held-out documents "
          f"of collection {p.collection!r}.", flush=True)
    report = generate_exam(
        context.db, p.exam_name, p.collection, model_id=p.model_id, heldout_fraction=p.heldout_fraction,
        heldout_documents=p.heldout_document_ids, questions=p.questions, out_of_scope=p.out_of_scope, seed=p.seed,
        max_new_tokens=p.max_new_tokens, progress=context.fraction, settings=context.settings,
        extra_settings={"job": context.job.id, "heldout_fraction": None if p.explicit_documents else p.heldout_fraction},
    )
    print(report.message, flush=True)
    return {"exam": report.exam.name, "questions": report.questions, "out_of_scope": report.out_of_scope,
            "chunks": report.chunks, "dropped": report.dropped,
            "heldout_documents": [d.filename for d in report.heldout], "message": report.message}


if __name__ == "__main__":
    main_for(run)
