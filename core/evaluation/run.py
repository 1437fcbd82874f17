"""python -m core.evaluation.run --job ID: an exam answered by up to four variants and scored, as a
job of its own process (kind "evaluate").

The variants: "base" (the model alone), "rag" (the model with passages from the collection), "ft"
(the model with a LoRA adapter), "rag+ft" (both). One base model is loaded; the adapter is
switched on for the ft variants and off for the others, never a second copy.

`submit_evaluation` makes every check before any work (the exam, the variants, the adapter and its
base model, the collection, leakage), then saves the run's row and queues the job. `run` answers
the questions in batches (greedy, left padding: core.models.batch), scores each answer
(core.evaluation.scoring) and stores it as soon as its batch is done, so a cancelled or crashed run
resumes where it stopped: pairs (question, variant) already stored are skipped. At the end the
summary (means with bootstrap intervals, paired verdicts) is written to the run's row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from core.answers.rag import NOTHING_FOUND, PreparedAnswer, cited_numbers, prepare_answer
from core.config import Settings, get_settings
from core.db import Database
from core.documents.library import get_collection, list_collections
from core.evaluation.exams import ExamInfo, check_no_leakage, get_exam
from core.evaluation.results import EvaluationError, get_run, load_answers, summarize
from core.evaluation.scoring import ExamItem, Passage, score_answer, without_citations
from core.evaluation.variants import USES_ADAPTER, USES_RAG, VARIANTS
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.registry import check_model_available

KIND = "evaluate"
RAG_VARIANTS = frozenset(v for v in VARIANTS if USES_RAG[v])
FT_VARIANTS = frozenset(v for v in VARIANTS if USES_ADAPTER[v])
Variant = Literal["base", "rag", "ft", "rag+ft"]
DEFAULT_BATCH_SIZE = 8
# Questions whose prompts are built (and retrieved for) together, then sorted by length into batches:
# similar lengths in a batch mean little padding.
WINDOW_BATCHES = 4


class EvaluateParams(BaseModel):
    """An evaluation job's parameters as stored in its row (all resolved and checked when queued)."""

    model_config = ConfigDict(extra="forbid")

    run_id: int
    exam: str
    variants: list[Variant]
    model: str
    adapter: str | None = None
    collection: str | None = None  # RAG's collection; its embedding model also scores similarity
    embedding_model: str  # for the similarity of answer and reference
    max_new_tokens: int
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int  # k of hit@k
    question_ids: list[int] | None = None  # only these questions (a knowledge-update check)
    reference_overrides: dict[int, str] | None = None  # question id → the reference to score against instead
    stop_loops: bool = True  # the loop guard (setting stop_loops) as it was when the run was queued
    rag_prompt: str = "cite-or-unknown"  # the RAG instruction (setting rag_prompt) as it was when queued


def parse_variants(variants: str | list[str]) -> list[str]:
    """"base, rag" or ["rag", "base"] → the distinct variants in the order given; unknown names refused."""
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    chosen: list[str] = []
    for name in (n.strip().lower().replace(" ", "") for n in names):
        name = {"ft+rag": "rag+ft", "both": "rag+ft"}.get(name, name)
        if not name:
            continue
        if name not in VARIANTS:
            raise EvaluationError(f"Unknown variant {name!r}: choose from {', '.join(VARIANTS)}.")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise EvaluationError(f"Choose at least one variant: {', '.join(VARIANTS)}.")
    return chosen


def exam_info(db: Database, name: str) -> ExamInfo:
    """The exam (ExamError when there is none of that name), refused when it has no questions."""
    info = get_exam(db, (name or "").strip()).info
    if not info.question_count:
        raise EvaluationError(f"Exam {info.name!r} has no questions: add some on the Exams page first.")
    return info


def _same_model(adapter_base: str | None, model: str) -> bool:
    if not adapter_base:
        return True  # an imported adapter that does not say: loading it checks the shapes
    return adapter_base == model or Path(adapter_base).name == Path(model).name


def _absolute_if_folder(model_id: str) -> str:
    """A relative model folder means the caller's folder; the job's process runs elsewhere (only folders
    under the model roots: core.security.model_sources)."""
    from core.security.model_sources import absolute_if_allowed_folder

    return absolute_if_allowed_folder(model_id)


def _check_question_ids(db: Database, exam_id: int, question_ids: list[int]) -> list[int]:
    with db.engine.connect() as connection:
        found = set(connection.execute(
            text("SELECT id FROM exam_questions WHERE exam_id = :e AND id = ANY(:ids)"), {"e": exam_id, "ids": list(question_ids)}
        ).scalars())
    missing = [q for q in question_ids if q not in found]
    if missing:
        raise EvaluationError(f"Questions {missing} are not in this exam.")
    if not question_ids:
        raise EvaluationError("Choose at least one question.")
    return sorted(set(question_ids))


@dataclass(frozen=True)
class EvaluationPlan:
    """A checked evaluation, ready to be saved and queued."""

    exam_id: int
    collection_id: int | None
    params: dict  # EvaluateParams without run_id
    settings: dict  # what eval_runs.settings records
    title: str


def plan_evaluation(
    db: Database,
    *,
    exam: str,
    variants: str | list[str],
    model: str | None = None,
    adapter: str | None = None,
    collection: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int | None = None,
    question_ids: list[int] | None = None,
    reference_overrides: dict[int, str] | None = None,
    extra_settings: dict | None = None,
    settings: Settings | None = None,
) -> EvaluationPlan:
    """Every check of `submit_evaluation`, saving nothing."""
    from core.models.adapters import find_adapter

    settings = settings or get_settings()
    chosen = parse_variants(variants)
    info = exam_info(db, exam)
    if question_ids is not None:
        question_ids = _check_question_ids(db, info.id, question_ids)
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    if not 1 <= max_new_tokens <= 8192:
        raise EvaluationError(f"Allow 1 to 8192 new tokens per answer, not {max_new_tokens}.")
    if batch_size < 1:
        raise EvaluationError(f"The batch size must be at least 1, not {batch_size}.")
    top_k = top_k or settings.rag_top_k
    if not 1 <= top_k <= settings.rag_top_k:
        raise EvaluationError(f"hit@k needs k between 1 and the {settings.rag_top_k} passages retrieved, not {top_k}.")
    model = _absolute_if_folder((model or settings.language_model).strip())
    check_model_available(model, settings)

    wants_ft = bool(FT_VARIANTS & set(chosen))
    adapter = (adapter or "").strip() or None
    if wants_ft and not adapter:
        raise EvaluationError("The ft and rag+ft variants need a fine-tuned adapter: choose one (--adapter NAME).")
    if not wants_ft:
        adapter = None  # nothing uses it: the run must not say it was evaluated
    if adapter:
        found = find_adapter(db, adapter, settings)
        if not _same_model(found.base_model, model):
            raise EvaluationError(f"Adapter {adapter!r} was trained on {found.base_model}, not on {model}: evaluate it "
                                  f"with --model {found.base_model}, or choose an adapter trained on {model}.")

    collection = (collection or "").strip() or info.collection
    collection_id = None
    if RAG_VARIANTS & set(chosen):
        if not collection:
            raise EvaluationError(f"The rag variants need a collection, and exam {info.name!r} names none: choose one.")
        counts = next((c for c in list_collections(db) if c.name == collection), None) or get_collection(db, collection)
        if counts.document_count == 0:
            raise EvaluationError(f"The collection {collection!r} has no documents: RAG would have nothing to retrieve. "
                                  "Add documents to it, or evaluate without the rag variants.")
    embedding_model = settings.embedding_model
    if collection:
        origin = get_collection(db, collection)
        collection_id, embedding_model = origin.id, origin.embedding_model
    if reference_overrides and question_ids is not None and not set(reference_overrides) <= set(question_ids):
        raise EvaluationError("New reference answers are given for questions the run does not ask.")
    leakage = None
    if adapter:  # refused (ExamError, with the reason) when its training data overlaps the exam
        check = check_no_leakage(db, info.name, adapter)
        leakage = {"verified": check.verified, "dataset": check.dataset, "examples_checked": check.examples_checked,
                   "note": check.note}

    run_settings = {
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "top_k": top_k, "rag_top_k": settings.rag_top_k,
        "rag_min_similarity": settings.rag_min_similarity, "search_mode": "hybrid", "decoding": "greedy",
        "stop_loops": settings.stop_loops, "rag_prompt": settings.rag_prompt,
        "embedding_model": embedding_model, "question_ids": question_ids, "leakage": leakage,
        "reference_overrides": {str(k): v for k, v in (reference_overrides or {}).items()} or None,
        **(extra_settings or {}),
    }
    params = {"exam": info.name, "variants": chosen, "model": model, "adapter": adapter, "collection": collection,
              "embedding_model": embedding_model, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "top_k": top_k, "question_ids": question_ids, "reference_overrides": reference_overrides,
              "stop_loops": settings.stop_loops, "rag_prompt": settings.rag_prompt}
    EvaluateParams.model_validate({**params, "run_id": 0})  # the job will read them back: fail here, not there
    subset = f" ({len(question_ids)} questions)" if question_ids else ""
    return EvaluationPlan(info.id, collection_id, params, run_settings,
                          f"Evaluate {info.name}: {', '.join(chosen)}{subset}")


def save_evaluation(db: Database, plan: EvaluationPlan) -> tuple[int, Job]:
    """The run's row, then its job (whose parameters carry the run's id); no row is left without a job."""
    p = plan.params
    with db.engine.begin() as connection:
        run_id = connection.execute(
            text("INSERT INTO eval_runs (exam_id, model, adapter, collection_id, variants, settings) "
                 "VALUES (:e, :m, :a, :c, :v, CAST(:s AS jsonb)) RETURNING id"),
            {"e": plan.exam_id, "m": p["model"], "a": p["adapter"], "c": plan.collection_id, "v": p["variants"],
             "s": json.dumps(plan.settings)},
        ).scalar_one()
    try:
        job = create_job(db, kind=KIND, params=EvaluateParams(**p, run_id=run_id), title=plan.title)
    except BaseException:
        with db.engine.begin() as connection:
            connection.execute(text("DELETE FROM eval_runs WHERE id = :id"), {"id": run_id})
        raise
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE eval_runs SET job_id = :j WHERE id = :id"), {"j": job.id, "id": run_id})
    return run_id, job


def submit_evaluation(
    db: Database,
    *,
    exam: str,
    variants: str | list[str],
    model: str | None = None,
    adapter: str | None = None,
    collection: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int | None = None,
    question_ids: list[int] | None = None,
    reference_overrides: dict[int, str] | None = None,
    extra_settings: dict | None = None,
    settings: Settings | None = None,
) -> tuple[int, Job]:
    """Check everything, then save the run's row and queue its job; returns (run id, job).

    Refused with a message, before anything is saved: an unknown exam or variant, an ft variant
    without an adapter, an adapter trained on another base model, a RAG variant without a
    collection (default: the exam's) or with an empty one, an adapter trained on the exam's documents.
    """
    plan = plan_evaluation(
        db, exam=exam, variants=variants, model=model, adapter=adapter, collection=collection,
        max_new_tokens=max_new_tokens, batch_size=batch_size, top_k=top_k, question_ids=question_ids,
        reference_overrides=reference_overrides, extra_settings=extra_settings, settings=settings,
    )
    return save_evaluation(db, plan)


# --- the job --------------------------------------------------------------------------------------


def _questions(db: Database, p: EvaluateParams) -> list[ExamItem]:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                """
                SELECT q.id, q.question, q.reference_answer, q.out_of_scope, q.chunk_id, q.document_id,
                       q.source_document, q.source_passage
                FROM exam_questions q JOIN exams e ON e.id = q.exam_id
                WHERE e.name = :exam AND (CAST(:ids AS bigint[]) IS NULL OR q.id = ANY(CAST(:ids AS bigint[])))
                ORDER BY q.ordinal
                """
            ),
            {"exam": p.exam, "ids": p.question_ids},
        ).all()
    overrides = p.reference_overrides or {}
    return [ExamItem(r.id, r.question, overrides.get(r.id, r.reference_answer), r.out_of_scope, r.chunk_id, r.document_id,
                     r.source_document, r.source_passage) for r in rows]


def _stored(db: Database, run_id: int) -> set[tuple[int, str]]:
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT question_id, variant FROM eval_answers WHERE run_id = :r"), {"r": run_id}).all()
    return {(row.question_id, row.variant) for row in rows}


def _passages(prepared: PreparedAnswer) -> list[Passage]:
    numbers = {source.chunk_id: source.number for source in prepared.sources}
    return [Passage(rank, hit.chunk_id, hit.document_id, hit.filename, hit.text, numbers.get(hit.chunk_id))
            for rank, hit in enumerate(prepared.hits, start=1)]


def _retrieved_json(prepared: PreparedAnswer, passages: list[Passage], source_ranks: list[int]) -> list[dict]:
    hits = {hit.chunk_id: hit for hit in prepared.hits}
    return [{"rank": p.rank, "number": p.number, "chunk_id": p.chunk_id, "document_id": p.document_id, "filename": p.filename,
             "page": hits[p.chunk_id].page, "heading": hits[p.chunk_id].heading, "text": p.text,
             "score": hits[p.chunk_id].score, "similarity": hits[p.chunk_id].vector_similarity,
             "is_source": p.rank in source_ranks} for p in passages]


def _store(db: Database, run_id: int, rows: list[dict]) -> None:
    """One batch's answers in one transaction; a pair already there (a resumed attempt) stays as it was."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                """
                INSERT INTO eval_answers (run_id, question_id, variant, answer, scores, diagnosis, retrieved, cited,
                                          prompt_tokens, new_tokens, latency_seconds, time_to_first_token, stopped_by)
                VALUES (:run_id, :question_id, :variant, :answer, CAST(:scores AS jsonb), :diagnosis,
                        CAST(:retrieved AS jsonb), CAST(:cited AS jsonb), :prompt_tokens, :new_tokens, :latency_seconds,
                        :time_to_first_token, :stopped_by)
                ON CONFLICT (run_id, question_id, variant) DO NOTHING
                """
            ),
            [{**row, "run_id": run_id} for row in rows],
        )


class _Answerer:
    """Answers and scores one batch of questions for one variant."""

    def __init__(self, context: JobContext, p: EvaluateParams):
        from core.documents.embeddings import load_embedder
        from core.models import load_model
        from core.models.adapters import find_adapter

        self.context, self.p = context, p
        self.loaded = load_model(p.model, settings=context.settings)
        self.adapter_path = find_adapter(context.db, p.adapter, context.settings).path if p.adapter else None
        self.embedder = load_embedder(p.embedding_model)
        self.reference_vectors: dict[int, object] = {}

    def prepare(self, item: ExamItem, variant: str) -> PreparedAnswer:
        return prepare_answer(self.context.db, self.loaded, item.question,
                              collection=self.p.collection if variant in RAG_VARIANTS else None,
                              max_new_tokens=self.p.max_new_tokens,
                              settings=self.context.settings.model_copy(update={"rag_prompt": self.p.rag_prompt}))

    def answer(self, variant: str, batch: list[tuple[ExamItem, PreparedAnswer]]) -> list[dict]:
        from core.models.batch import BatchAnswer, generate_batch

        ft = variant in FT_VARIANTS
        asked = [prepared for _, prepared in batch if not prepared.nothing_found]
        generated = iter(generate_batch(
            self.loaded, [prepared.messages for prepared in asked], max_new_tokens=self.p.max_new_tokens,
            adapter=self.p.adapter if ft else None, adapter_path=self.adapter_path if ft else None,
            batch_size=self.p.batch_size, stop_loops=self.p.stop_loops,
        ) if asked else [])
        answers: list[BatchAnswer] = []
        for _, prepared in batch:
            if prepared.nothing_found:  # what the Ask page says, without asking the model: an abstention
                seconds = prepared.retrieval_seconds
                answers.append(BatchAnswer(NOTHING_FOUND.format(collection=self.p.collection), 0, 0, seconds, seconds,
                                           "nothing found"))
            else:
                found = next(generated)
                answers.append(BatchAnswer(found.text, found.prompt_tokens, found.new_tokens,
                                           found.seconds + prepared.retrieval_seconds,
                                           found.time_to_first_token + prepared.retrieval_seconds, found.stopped_by))
        similarities = self._similarities([item for item, _ in batch], [a.text for a in answers])
        rows = []
        for (item, prepared), answer, similarity in zip(batch, answers, similarities, strict=True):
            passages = _passages(prepared)
            numbers = cited_numbers(answer.text, len(prepared.sources))
            scored = score_answer(item, answer.text, rag=variant in RAG_VARIANTS, retrieved=passages, cited_numbers=numbers,
                                  top_k=self.p.top_k, similarity=similarity, stopped_by=answer.stopped_by)
            by_number = {s.number: s for s in prepared.sources}
            rows.append({
                "question_id": item.question_id, "variant": variant, "answer": answer.text,
                "scores": json.dumps(scored.scores), "diagnosis": scored.diagnosis,
                "retrieved": json.dumps(_retrieved_json(prepared, passages, scored.source_ranks)) if variant in RAG_VARIANTS else None,
                "cited": json.dumps([{"number": n, "chunk_id": by_number[n].chunk_id, "filename": by_number[n].filename}
                                     for n in numbers]),
                "prompt_tokens": answer.prompt_tokens, "new_tokens": answer.new_tokens,
                "latency_seconds": answer.seconds, "time_to_first_token": answer.time_to_first_token,
                "stopped_by": answer.stopped_by,
            })
        return rows

    def _similarities(self, items: list[ExamItem], answers: list[str]) -> list[float]:
        """Cosine similarity of each answer to its reference (the vectors are normalised)."""
        missing = [item for item in items if item.question_id not in self.reference_vectors]
        if missing:
            for item, vector in zip(missing, self.embedder.embed([item.reference for item in missing]), strict=True):
                self.reference_vectors[item.question_id] = vector
        vectors = self.embedder.embed([without_citations(answer) for answer in answers])
        return [round(float(vector @ self.reference_vectors[item.question_id]), 6)
                for item, vector in zip(items, vectors, strict=True)]


def run(context: JobContext) -> dict:
    """The job's entry point: every (question, variant) not stored yet, answered, scored and stored
    batch by batch; then the summary."""
    p = EvaluateParams.model_validate(context.job.params)
    db = context.db
    questions = _questions(db, p)
    stored = _stored(db, p.run_id)
    total = len(questions) * len(p.variants)
    done = sum((item.question_id, variant) in stored for item in questions for variant in p.variants)
    print(f"Evaluating exam {p.exam!r} ({len(questions)} questions) with {', '.join(p.variants)} on {p.model}"
          + (f", adapter {p.adapter}" if p.adapter else "") + (f", collection {p.collection!r}" if p.collection else "")
          + (f"; {done} of {total} answers already stored, continuing." if done else "."), flush=True)
    context.progress(done, total, "answers", eta_seconds=None)
    answerer = _Answerer(context, p)
    print(f"Loaded {answerer.loaded.description}; batches of {p.batch_size}, at most {p.max_new_tokens} new tokens.",
          flush=True)
    started, answered = time.perf_counter(), 0
    window = p.batch_size * WINDOW_BATCHES
    for variant in p.variants:
        pending = [item for item in questions if (item.question_id, variant) not in stored]
        if not pending:
            continue
        print(f"{variant}: {len(pending)} questions to answer.", flush=True)
        for start in range(0, len(pending), window):
            prepared = [(item, answerer.prepare(item, variant)) for item in pending[start:start + window]]
            prepared.sort(key=lambda pair: pair[1].prompt_tokens)  # similar lengths together: less padding
            # On a CPU the model batches continuously (core/models/continuous.py): the more prompts per call,
            # the fewer steps run with empty slots, so the whole window goes at once and is stored together.
            group = window if answerer.loaded.model.device.type == "cpu" else p.batch_size
            for offset in range(0, len(prepared), group):
                batch = prepared[offset:offset + group]
                _store(db, p.run_id, answerer.answer(variant, batch))
                done, answered = done + len(batch), answered + len(batch)
                elapsed = time.perf_counter() - started
                eta = (total - done) * elapsed / answered
                print(f"{variant}: {done}/{total} answers stored ({elapsed / answered:.2f} s per answer).", flush=True)
                context.progress(done, total, "answers", eta_seconds=eta)
    return finish_run(db, p.run_id)


def finish_run(db: Database, run_id: int) -> dict:
    """Write the summary and the finishing time to the run's row; returns the job's result."""
    run = get_run(db, run_id)
    answers = load_answers(db, run)
    summary = summarize(answers, run.variants, knowledge_update=run.settings.get("knowledge_update"))
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE eval_runs SET summary = CAST(:s AS jsonb), finished_at = now() WHERE id = :id"),
                           {"s": json.dumps(summary), "id": run_id})
    headline = {v: (m.get("token_f1") or {}).get("mean") for v, m in summary["variants"].items()}
    line = ", ".join(f"{v} {f1:.3f}" for v, f1 in headline.items() if f1 is not None)
    print(f"Run {run_id}: {len(answers)} answers scored. Token F1: {line}.", flush=True)
    return {"run_id": run_id, "answers": len(answers), "token_f1": headline,
            "message": f"Run {run_id} finished: token F1 {line}."}


if __name__ == "__main__":
    main_for(run)
