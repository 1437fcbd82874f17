"""RAFT training data (Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific RAG"):
each question of a generated question/answer dataset is asked again in the prompt the app's RAG
builds at answer time (core.answers.rag.rag_messages), its source passage among distractor
passages, and the answer cites the source's number. An adapter trained on it is the
"fine-tuned + RAG" variant: it learns to find the passage that answers and to ignore the others.

Distractors are hard negatives: the collection's best hybrid-search hits for the question that are
not the source (nor overlap it), topped up with random passages. In `oracle_fraction` of the
examples (RAFT's P%) the source is there; in the others only distractors are, and the reference
answer is kept, as RAFT does, so the model does not learn that a passage always holds the answer.
The documents that an exam of the collection asks about feed neither sources nor distractors.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import text as sql

from core.answers.rag import Source, rag_messages
from core.config import Settings, get_settings
from core.datasets.errors import DatasetError
from core.datasets.generation import exam_document_ids
from core.datasets.preview import chat_tokenizer
from core.datasets.splitting import DEFAULT_VALIDATION_FRACTION, check_fraction
from core.datasets.store import DatasetInfo, NewExample, ensure_name_free, get_dataset, write_dataset
from core.db import Database
from core.documents import library
from core.documents.library import CollectionInfo, get_collection
from core.formatting import plural

logger = logging.getLogger(__name__)

DEFAULT_DISTRACTORS = 3
DEFAULT_ORACLE_FRACTION = 0.8
MAX_DISTRACTORS = 20
# Tokens kept free below the model's window: training adds an end-of-turn token where a template has none.
WINDOW_MARGIN = 16

# Why an example of the source dataset was left out, as the report words it.
NO_SOURCE = "without a source passage"
OTHER_COLLECTION = "whose source is in another collection"
EXAM_SOURCE = "whose source document is held out for an exam"
NO_QUESTION = "without a question and an answer"
TOO_LONG = "too long for the model even with one passage"
NO_DISTRACTOR = "with no other passage to use as a distractor"

_CITATION = re.compile(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]")


@dataclass(frozen=True)
class Passage:
    """A chunk as the RAG prompt shows it."""

    chunk_id: int
    document_id: int
    filename: str
    page: int | None
    heading: str | None
    text: str
    char_start: int
    char_end: int

    def overlaps(self, other: Passage) -> bool:
        """The same passage, or one sharing text with it (chunks of one document overlap)."""
        return self.chunk_id == other.chunk_id or (
            self.document_id == other.document_id and self.char_start < other.char_end and other.char_start < self.char_end)


@dataclass(frozen=True)
class SourceExample:
    question: str
    answer: str
    source: Passage


@dataclass(frozen=True)
class RaftReport:
    dataset: DatasetInfo
    from_dataset: str
    with_source: int  # examples whose prompt holds the source passage
    without_source: int  # examples with distractors only
    distractors: int  # distractors in all examples together
    hard_negatives: int  # of them, search hits for the question (the rest are random passages)
    longest: int  # tokens of the longest example, chat template included
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> examples of the source dataset
    excluded_chunks: int = 0  # chunks of exam documents, never used
    seconds: float = 0.0

    @property
    def examples(self) -> int:
        return self.with_source + self.without_source

    @property
    def message(self) -> str:
        d = self.dataset
        text = (f"{self.examples:,} RAFT examples from {self.from_dataset!r} saved as {d.name!r} "
                f"({d.train_count:,} train, {d.validation_count:,} validation): {self.with_source:,} with their source "
                f"passage, {self.without_source:,} with distractors only; {self.distractors:,} distractors, "
                f"{self.hard_negatives:,} of them search hits. Longest example {self.longest:,} tokens: fine-tune with "
                f"a max sequence length at least that long, or answers are cut.")
        if self.left_out:
            text += " Left out " + "; ".join(f"{plural(n, 'example')} {reason}" for reason, n in self.left_out.items()) + "."
        if self.excluded_chunks:
            text += f" {self.excluded_chunks:,} chunks of exam documents were not used."
        return text


def build_raft_dataset(
    db: Database,
    name: str,
    *,
    from_dataset: str,
    collection: str,
    distractors: int = DEFAULT_DISTRACTORS,
    oracle_fraction: float = DEFAULT_ORACLE_FRACTION,
    seed: int = 0,
    model_id: str | None = None,
    max_tokens: int | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    exclude_document_ids: Iterable[int] | None = None,
    settings: Settings | None = None,
    progress: Callable[[float], None] | None = None,
) -> RaftReport:
    """Save a chat dataset of RAFT examples built from the question/answer dataset `from_dataset`,
    whose examples must link to their source chunk in `collection` (as generated pairs do).

    Each example: the question with `distractors` passages, plus its source in
    round(`oracle_fraction` × examples) of them (chosen with `seed`), shuffled and numbered in the
    prompt of core.answers.rag.rag_messages; the answer is the reference answer citing the source.
    Distractors are dropped, the weakest first, until the example fits `max_tokens` of `model_id`'s
    tokenizer (default: its context window less a margin). The split is by the source's document;
    the documents of `exclude_document_ids` (default: those of the collection's exams) are never
    used. Raising from `progress` stops the run before anything is saved."""
    started = time.perf_counter()
    settings = settings or get_settings()
    name = ensure_name_free(db, name)
    check_raft_options(distractors, oracle_fraction)
    check_fraction(validation_fraction)
    origin = get_collection(db, collection)
    pool, excluded_chunks, excluded_documents = _passages(db, origin, exclude_document_ids)
    sources, left_out = usable_examples(db, from_dataset, origin, pool, excluded_documents)
    model_id = model_id or settings.language_model
    tokenizer, window = chat_tokenizer(model_id, settings)
    limit = window - WINDOW_MARGIN if max_tokens is None else min(max_tokens, window - WINDOW_MARGIN)
    if limit < 64:
        raise DatasetError(f"{limit} tokens leave no room for passages, a question and an answer: allow more.")

    rng = random.Random(seed)
    with_source = set(rng.sample(range(len(sources)), round(oracle_fraction * len(sources))))
    allowed_documents = None if not excluded_documents else sorted({p.document_id for p in pool.values()})
    passages = list(pool.values())
    report = progress or (lambda fraction: None)
    report(0.0)
    examples: list[NewExample] = []
    counts = {"with": 0, "without": 0, "distractors": 0, "hard": 0, "longest": 0}
    for index, example in enumerate(sources):
        oracle = index in with_source
        hard = _hard_negatives(db, example, origin.name, pool, distractors, allowed_documents, settings)
        chosen = hard + _random_passages(rng, passages, example.source, hard, distractors - len(hard))
        fitted = _fit(tokenizer, rng, example, chosen, oracle, limit)
        if isinstance(fitted, str):
            left_out[fitted] = left_out.get(fitted, 0) + 1
        else:
            messages, kept, length = fitted
            examples.append(NewExample(messages=messages, document_id=example.source.document_id,
                                       chunk_id=example.source.chunk_id))
            counts["with" if oracle else "without"] += 1
            counts["distractors"] += len(kept)
            counts["hard"] += sum(1 for p in kept if p in hard)
            counts["longest"] = max(counts["longest"], length)
        report((index + 1) / len(sources))
    if not examples:
        raise DatasetError(f"No example of {from_dataset!r} could be built (" + _reasons(left_out) + "), so nothing was saved.")
    source = (f"RAFT from {from_dataset!r} in {origin.name!r}: {distractors} distractors, the source in "
              f"{oracle_fraction:.0%} (seed {seed}), lengths for {model_id}"
              + (f" ({excluded_chunks:,} chunks of exam documents left out)" if excluded_chunks else ""))
    dataset = write_dataset(db, name, kind="chat", source=source, examples=examples, collection_id=origin.id,
                            validation_fraction=validation_fraction, seed=seed)
    return RaftReport(dataset, from_dataset, counts["with"], counts["without"], counts["distractors"], counts["hard"],
                      counts["longest"], left_out, excluded_chunks, time.perf_counter() - started)


def check_raft_source(db: Database, from_dataset: str, origin: CollectionInfo, distractors: int = DEFAULT_DISTRACTORS,
                      oracle_fraction: float = DEFAULT_ORACLE_FRACTION, *,
                      exclude_document_ids: Iterable[int] | None = None) -> str:
    """Before a job is queued: the options, and that `from_dataset` has questions whose source
    passage is in `origin` and may be used. Returns the dataset's name."""
    check_raft_options(distractors, oracle_fraction)
    pool, _, excluded_documents = _passages(db, origin, exclude_document_ids)
    usable_examples(db, from_dataset, origin, pool, excluded_documents)
    return get_dataset(db, from_dataset).name


def check_raft_options(distractors: int, oracle_fraction: float) -> None:
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise DatasetError(f"Use 0 to {MAX_DISTRACTORS} distractor passages per question; got {distractors}.")
    if not 0 <= oracle_fraction <= 1:
        raise DatasetError(f"The share of examples with their source passage is between 0 and 1 (0.8: four in five); "
                           f"got {oracle_fraction}.")
    if distractors == 0 and oracle_fraction < 1:
        raise DatasetError("Without distractors an example without its source would have no passage at all: "
                           "use at least 1 distractor, or an oracle fraction of 1.")


def _reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{n:,} {reason}" for reason, n in counts.items())


# --- the source dataset -----------------------------------------------------------------------


def usable_examples(db: Database, from_dataset: str, origin: CollectionInfo, pool: dict[int, Passage],
                    excluded_documents: set[int]) -> tuple[list[SourceExample], dict[str, int]]:
    """The question/answer pairs of `from_dataset` whose source passage may be used, and how many
    were left out by reason. Refuses a dataset with no example linked to a passage (imported ones)."""
    info = get_dataset(db, from_dataset)
    if info.kind != "chat":
        raise DatasetError(f"Dataset {from_dataset!r} is plain text; RAFT examples are built from question/answer pairs.")
    with db.engine.connect() as connection:
        rows = connection.execute(
            sql("SELECT messages, chunk_id, document_id FROM training_examples WHERE dataset_id = :d ORDER BY ordinal"),
            {"d": info.id}).all()
    unlinked = sum(1 for r in rows if r.chunk_id is None)
    if unlinked == len(rows):
        raise DatasetError(
            f"None of the {len(rows):,} examples of {from_dataset!r} is linked to the passage it was written from, so there "
            "is no source to put among the distractors. Use a question/answer dataset generated from a collection "
            "(`datasets generate --kind qa`); imported files carry no passages, and re-ingesting a document unlinks its examples.")
    left_out: dict[str, int] = {}
    usable: list[SourceExample] = []
    for row in rows:
        pair = _question_and_answer(row.messages)
        reason = (NO_SOURCE if row.chunk_id is None else EXAM_SOURCE if row.document_id in excluded_documents
                  else OTHER_COLLECTION if row.chunk_id not in pool else NO_QUESTION if pair is None else "")
        if reason:
            left_out[reason] = left_out.get(reason, 0) + 1
        else:
            usable.append(SourceExample(pair[0], pair[1], pool[row.chunk_id]))
    if not usable:
        raise DatasetError(f"No example of {from_dataset!r} can be used with collection {origin.name!r}: "
                           f"{_reasons(left_out)}. Choose the collection its questions were written from.")
    return usable, left_out


def _question_and_answer(messages: list[dict] | None) -> tuple[str, str] | None:
    """The last assistant turn and the user turn before it."""
    turns = messages or []
    answer_at = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=None)
    if answer_at is None:
        return None
    question = next((m for m in reversed(turns[:answer_at]) if m.get("role") == "user"), None)
    if question is None or not question.get("content", "").strip() or not turns[answer_at].get("content", "").strip():
        return None
    return question["content"].strip(), turns[answer_at]["content"].strip()


# --- passages ---------------------------------------------------------------------------------


def _passages(db: Database, origin: CollectionInfo, exclude_document_ids: Iterable[int] | None
              ) -> tuple[dict[int, Passage], int, set[int]]:
    """(chunk id → passage for every chunk training may use, chunks left out, documents left out).
    The chunks are read through core.documents.library, which owns them."""
    excluded = set(exam_document_ids(db, origin.id) if exclude_document_ids is None else exclude_document_ids)
    documents = sorted(library.list_documents(db, origin.name), key=lambda d: d.id)
    if not any(d.chunk_count for d in documents):
        raise DatasetError(f"Collection {origin.name!r} has no documents yet: add documents to it first.")
    pool = {c.id: Passage(c.id, d.id, d.filename, c.page, c.heading, c.text, c.char_start, c.char_end)
            for d in documents if d.id not in excluded for c in library.document_chunks(db, d.id)}
    if not pool:
        raise DatasetError(f"Every document of collection {origin.name!r} is held out for an exam, so there is nothing "
                           "left to train on: add documents to the collection, or delete the exam that uses them.")
    return pool, sum(d.chunk_count for d in documents if d.id in excluded), excluded


def _hard_negatives(db: Database, example: SourceExample, collection: str, pool: dict[int, Passage], count: int,
                    allowed_documents: list[int] | None, settings: Settings) -> list[Passage]:
    """The best hybrid-search hits for the question that neither are nor overlap the source, best first."""
    from core.documents.search import QueryError, search

    if count == 0:
        return []
    try:
        hits = search(db, example.question[: settings.max_query_chars], collection=collection, k=min(1000, 2 * count + 5),
                      mode="hybrid", document_ids=allowed_documents, settings=settings)
    except QueryError:
        return []
    chosen: list[Passage] = []
    for hit in hits:
        passage = pool.get(hit.chunk_id)
        if passage is not None and not passage.overlaps(example.source) and len(chosen) < count:
            chosen.append(passage)
    return chosen


def _random_passages(rng: random.Random, passages: list[Passage], source: Passage, taken: list[Passage],
                     count: int) -> list[Passage]:
    """`count` random passages other than the source, its overlaps and those `taken` (fewer when
    the collection has fewer)."""
    if count <= 0:
        return []
    taken_ids = {p.chunk_id for p in taken}
    candidates = [p for p in passages if p.chunk_id not in taken_ids and not p.overlaps(source)]
    return rng.sample(candidates, min(count, len(candidates)))


# --- one example ------------------------------------------------------------------------------


def _fit(tokenizer, rng: random.Random, example: SourceExample, distractors: list[Passage], oracle: bool,
         limit: int) -> tuple[list[dict], list[Passage], int] | str:
    """(messages, the distractors kept, tokens) of the example within `limit` tokens, dropping the
    weakest distractors first; or the reason it cannot be built."""
    order = {p.chunk_id: rng.random() for p in [example.source, *distractors]}  # one shuffle, kept while dropping
    answer = _CITATION.sub("", example.answer).strip() or example.answer  # old numbers name other passages
    least = 0 if oracle else 1
    if len(distractors) < least:
        return NO_DISTRACTOR
    for keep in range(len(distractors), least - 1, -1):
        kept = distractors[:keep]
        shown = sorted([example.source, *kept] if oracle else kept, key=lambda p: order[p.chunk_id])
        sources = [Source(number=n, chunk_id=p.chunk_id, document_id=p.document_id, filename=p.filename, page=p.page,
                          heading=p.heading, text=p.text, score=0.0, similarity=None) for n, p in enumerate(shown, start=1)]
        cited = f"{answer} [{shown.index(example.source) + 1}]" if oracle else answer
        messages = [*_fold_system_turn_if_refused(tokenizer, rag_messages(example.question, sources)),
                    {"role": "assistant", "content": cited}]
        length = _length(tokenizer, messages)
        if length <= limit:
            return messages, kept, length
    return TOO_LONG


def _length(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def _fold_system_turn_if_refused(tokenizer, messages: list[dict]) -> list[dict]:
    """As the answer-time prompt does (core.models.generation.fold_system_turn_if_refused), with the
    tokenizer alone: a template that rejects a system turn gets it folded into the first user turn."""
    try:
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return messages
    except Exception:  # jinja2 TemplateError and friends, raised by the model's own template
        if messages[0]["role"] != "system":
            raise
        system, first, *rest = messages
        return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]
