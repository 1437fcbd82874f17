"""python -m core.datasets.generation_job --job ID: training data generated from a collection, as a
job of its own process (kind "generate-dataset").

`submit_generate_dataset` makes every check that can fail fast (the name is free, the collection
has chunks, the split fraction, the model is on this machine; for RAFT, the source Q/A dataset links
to passages of the collection), then queues the job; a worker runs `run`, which calls the
generation with the job's progress. A cancel stops it at the next chunk,
before anything is saved, like any other failure: the dataset appears whole or not at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from core.config import Settings, get_settings
from core.datasets.errors import DatasetError
from core.datasets.generation import DEFAULT_QA_CHUNKS, DEFAULT_QA_NEW_TOKENS, generate_qa_dataset, generate_text_dataset
from core.datasets.raft import DEFAULT_DISTRACTORS, DEFAULT_ORACLE_FRACTION, build_raft_dataset, check_raft_source
from core.datasets.splitting import DEFAULT_VALIDATION_FRACTION, check_fraction
from core.datasets.store import ensure_name_free
from core.db import Database
from core.documents.library import get_collection
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.registry import check_model_available

KIND = "generate-dataset"
WHAT = {"qa": "question/answer pairs", "text": "plain text", "raft": "RAFT examples"}


class GenerateDatasetParams(BaseModel):
    """A generation job's parameters as stored in its row (checked before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    dataset_name: str
    collection: str
    kind: Literal["qa", "text", "raft"] = "qa"
    model_id: str | None = None  # qa: the model that writes the pairs; raft: whose tokenizer measures (resolved when queued)
    max_chunks: int | None = DEFAULT_QA_CHUNKS
    max_new_tokens: int = DEFAULT_QA_NEW_TOKENS
    temperature: float = 0.0
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = 0
    exclude_document_ids: list[int] | None = None  # None: the documents of the collection's exams, when it runs
    from_dataset: str | None = None  # raft: the question/answer dataset whose questions it asks again
    distractors: int = DEFAULT_DISTRACTORS  # raft
    oracle_fraction: float = DEFAULT_ORACLE_FRACTION  # raft: share of examples with their source passage


def submit_generate_dataset(
    db: Database,
    *,
    name: str,
    collection: str,
    kind: Literal["qa", "text", "raft"] = "qa",
    model_id: str | None = None,
    max_chunks: int | None = DEFAULT_QA_CHUNKS,
    max_new_tokens: int = DEFAULT_QA_NEW_TOKENS,
    temperature: float = 0.0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    exclude_document_ids: list[int] | None = None,
    from_dataset: str | None = None,
    distractors: int = DEFAULT_DISTRACTORS,
    oracle_fraction: float = DEFAULT_ORACLE_FRACTION,
    settings: Settings | None = None,
) -> Job:
    """Check everything that can fail fast, then queue the generation (one per dataset name)."""
    settings = settings or get_settings()
    name = ensure_name_free(db, name)
    if kind not in WHAT:
        raise DatasetError(f"Generate {kind!r}? Use 'qa' (question/answer pairs), 'text' (plain text) or 'raft' "
                           "(questions of a Q/A dataset with their source among distractor passages).")
    check_fraction(validation_fraction)
    if max_chunks is not None and max_chunks < 1:
        raise DatasetError(f"Use at least 1 chunk; got {max_chunks}.")
    origin = get_collection(db, collection)
    if not _chunk_count(db, origin.id):
        raise DatasetError(f"Collection {origin.name!r} has no documents yet: add documents to it first.")
    if kind == "qa":
        if max_new_tokens < 16:
            raise DatasetError(f"A question and its answer need room: allow at least 16 new tokens, not {max_new_tokens}.")
        if temperature < 0:
            raise DatasetError(f"The temperature must be 0 (greedy) or more; got {temperature}.")
        model_id = _absolute_if_folder(model_id or settings.language_model)
        check_model_available(model_id, settings)
    elif kind == "raft":
        if not from_dataset:
            raise DatasetError("RAFT examples ask the questions of a question/answer dataset again: name it (--from).")
        from_dataset = check_raft_source(db, from_dataset, origin, distractors, oracle_fraction,
                                         exclude_document_ids=exclude_document_ids)
        model_id = _absolute_if_folder(model_id or settings.language_model)
        check_model_available(model_id, settings)
    else:
        model_id = None
    params = GenerateDatasetParams(dataset_name=name, collection=origin.name, kind=kind, model_id=model_id,
                                   max_chunks=max_chunks, max_new_tokens=max_new_tokens, temperature=temperature,
                                   validation_fraction=validation_fraction, seed=seed,
                                   exclude_document_ids=None if exclude_document_ids is None else list(exclude_document_ids),
                                   from_dataset=from_dataset if kind == "raft" else None, distractors=distractors,
                                   oracle_fraction=oracle_fraction)
    source = f"{from_dataset} in {origin.name}" if kind == "raft" else origin.name
    return create_job(db, kind=KIND, params=params, title=f"Generate {name} ({WHAT[kind]} from {source})",
                      unique_key="dataset_name")


def _chunk_count(db: Database, collection_id: int) -> int:
    with db.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM chunks WHERE collection_id = :c"), {"c": collection_id}).scalar())


def _absolute_if_folder(model_id: str) -> str:
    """A relative model folder means the caller's folder; the job's process runs elsewhere (only folders
    under the model roots: core.security.model_sources)."""
    from core.security.model_sources import absolute_if_allowed_folder

    return absolute_if_allowed_folder(model_id)


def run(context: JobContext) -> dict:
    """The job's entry point: generate, save in one transaction, return what was saved."""
    p = GenerateDatasetParams.model_validate(context.job.params)
    by = f" by {p.model_id}" if p.kind == "qa" else f" from dataset {p.from_dataset!r}" if p.kind == "raft" else ""
    print(f"Generating {WHAT[p.kind]}{by} from collection {p.collection!r} as dataset {p.dataset_name!r}.", flush=True)
    result: dict = {}
    if p.kind == "text":
        info = generate_text_dataset(context.db, p.dataset_name, p.collection, max_chunks=p.max_chunks,
                                     validation_fraction=p.validation_fraction, seed=p.seed,
                                     exclude_document_ids=p.exclude_document_ids)
        message = f"Saved {info.name!r}: {info.train_count:,} train and {info.validation_count:,} validation passages."
    elif p.kind == "raft":
        raft = build_raft_dataset(
            context.db, p.dataset_name, from_dataset=p.from_dataset, collection=p.collection, distractors=p.distractors,
            oracle_fraction=p.oracle_fraction, seed=p.seed, model_id=p.model_id, validation_fraction=p.validation_fraction,
            exclude_document_ids=p.exclude_document_ids, settings=context.settings, progress=context.fraction,
        )
        info, message = raft.dataset, raft.message
        result = {"with_source": raft.with_source, "without_source": raft.without_source, "longest": raft.longest,
                  "left_out": raft.left_out}
    else:
        report = generate_qa_dataset(
            context.db, p.dataset_name, p.collection, model_id=p.model_id, max_chunks=p.max_chunks,
            max_new_tokens=p.max_new_tokens, temperature=p.temperature, validation_fraction=p.validation_fraction,
            seed=p.seed, exclude_document_ids=p.exclude_document_ids, progress=context.fraction, settings=context.settings,
        )
        info, message = report.dataset, report.message
        result = {"chunks": report.chunks, "pairs": report.pairs, "dropped": report.dropped}
    print(message, flush=True)
    return {"dataset": info.name, "kind": info.kind, "examples": info.example_count, "train": info.train_count,
            "validation": info.validation_count, "message": message, **result}


if __name__ == "__main__":
    main_for(run)
