"""Training data from a collection's documents: question/answer pairs the selected model writes
from each chunk (each pair keeps its chunk and document), or the chunks' own text for continued
pre-training. Both are saved in one transaction and split by document.

The question prompt is deliberately plain: a fixed reply form ("Question: …" / "Answer: …") and
one worked example, which even a 135M model follows. Replies that do not follow it are dropped
and counted, never guessed at.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text as sql

from core.config import Settings
from core.datasets.errors import DatasetError
from core.datasets.formats import clean_text
from core.datasets.splitting import DEFAULT_VALIDATION_FRACTION, check_fraction
from core.datasets.store import DatasetInfo, NewExample, ensure_name_free, write_dataset
from core.db import Database
from core.documents import library
from core.documents.library import ChunkText, CollectionInfo, get_collection

logger = logging.getLogger(__name__)

QA_SYSTEM_PROMPT = (
    "You write one quiz question about a text, and its answer. The question must be answerable from the text alone. "
    "Reply in exactly this form:\nQuestion: <the question>\nAnswer: <the answer>"
)
# The worked example: small models copy a striking example into their pairs (an Eiffel Tower one
# turned up in questions about boilers), so it is plain, and pairs that borrow its words are dropped.
EXAMPLE_TEXT = "Honey never spoils when it is kept sealed, because bacteria cannot grow in it."
EXAMPLE_QUESTION = "Why does sealed honey never spoil?"
EXAMPLE_REPLY = f"Question: {EXAMPLE_QUESTION}\nAnswer: Because bacteria cannot grow in it."
EXAMPLE_WORDS = ("honey", "bacteria")

DEFAULT_QA_CHUNKS = 50
DEFAULT_QA_NEW_TOKENS = 160
GREEDY_BATCH = 8  # chunks whose greedy replies are generated together (what an evaluation run uses)

# Why a reply gave no pair, as the report words it.
NO_PAIR = "no 'Question: … Answer: …' in the reply"
CUT_OFF = "cut off by the new-token limit"
DUPLICATE = "same question as another chunk's"
BORROWED = "borrowed from the worked example"
TOO_LONG = "chunk too long for the model's context window"


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


@dataclass(frozen=True)
class GenerationReport:
    dataset: DatasetInfo
    chunks: int  # chunks the model read
    pairs: int  # pairs kept
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unparsed: list[str] = field(default_factory=list)  # the first few replies without a pair, to show
    seconds: float = 0.0
    excluded_chunks: int = 0  # chunks of exam documents left out

    @property
    def message(self) -> str:
        d = self.dataset
        text = (f"{self.pairs:,} question/answer pairs from {self.chunks:,} chunks saved as {d.name!r} "
                f"({d.train_count:,} train, {d.validation_count:,} validation).")
        if self.dropped:
            text += f" Dropped {sum(self.dropped.values()):,}: " + _reasons(self.dropped) + "."
        if self.excluded_chunks:
            text += f" Left out {self.excluded_chunks:,} chunks of exam documents."
        return text


def _reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{n:,} {reason}" for reason, n in counts.items())


# --- question/answer pairs --------------------------------------------------------------------


def generate_qa_dataset(
    db: Database,
    name: str,
    collection: str,
    *,
    model_id: str | None = None,
    max_chunks: int | None = DEFAULT_QA_CHUNKS,
    max_new_tokens: int = DEFAULT_QA_NEW_TOKENS,
    temperature: float = 0.0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    exclude_document_ids: Iterable[int] | None = None,
    progress: Callable[[float], None] | None = None,
    settings: Settings | None = None,
) -> GenerationReport:
    """Ask the model for one question and its answer per chunk (at most `max_chunks`, spread evenly
    over the collection) and save the pairs as a chat dataset. Nothing is saved when no reply gives
    a pair; raising from `progress` stops the run, also without saving. The documents of
    `exclude_document_ids` are left out (default: the documents of the collection's exams)."""
    from core.models import load_model

    started = time.perf_counter()
    name = ensure_name_free(db, name)
    check_fraction(validation_fraction)
    if max_new_tokens < 16:
        raise DatasetError(f"A question and its answer need room: allow at least 16 new tokens, not {max_new_tokens}.")
    origin = get_collection(db, collection)
    available, excluded = training_chunks(db, origin, exclude_document_ids)
    chunks = sample_evenly(available, max_chunks)
    loaded = load_model(model_id, settings=settings)
    if max_new_tokens >= loaded.context_window - 32:
        raise DatasetError(f"{max_new_tokens} new tokens leave no room for the text in {loaded.model_id}'s "
                           f"{loaded.context_window}-token window; choose fewer.")
    report = progress or (lambda fraction: None)
    report(0.0)
    examples: list[NewExample] = []
    dropped: dict[str, int] = {}
    unparsed: list[str] = []
    questions: set[str] = set()
    group = GREEDY_BATCH if temperature == 0 else 1
    for start in range(0, len(chunks), group):
        batch = chunks[start:start + group]
        for done, (chunk, (pair, reason, reply)) in enumerate(
                zip(batch, _ask_for_pairs(loaded, batch, questions, max_new_tokens, temperature), strict=True),
                start=start + 1):
            if pair is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                if reason == NO_PAIR and len(unparsed) < 3:
                    unparsed.append(reply[:300])
            else:
                examples.append(NewExample(messages=[{"role": "user", "content": pair.question},
                                                     {"role": "assistant", "content": pair.answer}],
                                           document_id=chunk.document_id, chunk_id=chunk.id))
            report(done / len(chunks))
    if not examples:
        first = f" Its first reply began: {unparsed[0][:200]!r}." if unparsed else ""
        raise DatasetError(
            f"{loaded.model_id} wrote no usable question/answer pair from the {len(chunks)} chunks it read "
            f"({_reasons(dropped)}), so nothing was saved.{first} Try a larger model, a lower temperature, or more new tokens."
        )
    source = f"questions and answers by {loaded.model_id} from {collection!r}" + _left_out(excluded)
    dataset = write_dataset(db, name, kind="chat", source=source, examples=examples, collection_id=origin.id,
                            validation_fraction=validation_fraction, seed=seed)
    return GenerationReport(dataset, len(chunks), len(examples), dropped, unparsed, time.perf_counter() - started, excluded)


def _ask_for_pairs(loaded, chunks: list[ChunkText], questions: set[str], max_new_tokens: int,
                   temperature: float) -> list[tuple[QAPair | None, str, str]]:
    """(pair or None, why there is none, the model's reply) for each chunk, judged in order (a pair's
    question joins `questions`). Greedy replies come from one batched generation (left-padded, one
    forward pass per token for all: ~3x faster on a CPU, the same text as one by one); sampled ones
    one by one."""
    prompts = [fit_qa_prompt(loaded, chunk, loaded.context_window - max_new_tokens) for chunk in chunks]
    replies = iter(_write_replies(loaded, [p for p in prompts if p is not None], max_new_tokens, temperature))
    results = []
    for chunk, prompt in zip(chunks, prompts, strict=True):
        if prompt is None:
            results.append((None, TOO_LONG, ""))
            continue
        reply, cut_off = next(replies)
        pair, reason = judge_reply(reply, chunk, questions, cut_off=cut_off)
        if pair is not None:
            questions.add(pair.question.lower())
        results.append((pair, reason, reply))
    return results


def _write_replies(loaded, prompts: list[list[dict]], max_new_tokens: int, temperature: float) -> list[tuple[str, bool]]:
    """(reply, whether it hit the new-token limit) per prompt."""
    from core.models import stream_chat
    from core.models.batch import generate_batch

    if not prompts:
        return []
    if temperature == 0:
        return [(answer.text, answer.stopped_by == "max new tokens")
                for answer in generate_batch(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))]
    replies = []
    for messages in prompts:
        generation = stream_chat(loaded, messages, max_new_tokens=max_new_tokens, temperature=temperature)
        for _ in generation:
            pass
        replies.append((generation.text, generation.stats.stopped_by == "max new tokens"))
    return replies


def judge_reply(reply: str, chunk: ChunkText, questions: set[str], *, cut_off: bool) -> tuple[QAPair | None, str]:
    """The pair a reply gives for `chunk`, or None and why there is none (NO_PAIR, CUT_OFF,
    BORROWED, DUPLICATE). `questions`: the lower-cased questions kept so far; `cut_off`: the reply
    hit the new-token limit. Exam generation (core.evaluation.exams) judges its replies the same way."""
    pair = parse_qa(reply, cut_off=cut_off)
    if pair is None:
        return None, CUT_OFF if parse_qa(reply) is not None else NO_PAIR
    said, text = f"{pair.question} {pair.answer}".lower(), chunk.text.lower()
    if any(word in said and word not in text for word in EXAMPLE_WORDS):
        return None, BORROWED
    if pair.question.lower() in questions:
        return None, DUPLICATE
    return pair, ""


def qa_messages(chunk_text: str) -> list[dict]:
    return [
        {"role": "system", "content": QA_SYSTEM_PROMPT},
        {"role": "user", "content": f"Text:\n{EXAMPLE_TEXT}"},
        {"role": "assistant", "content": EXAMPLE_REPLY},
        {"role": "user", "content": f"Text:\n{chunk_text}"},
    ]


def fit_qa_prompt(loaded, chunk: ChunkText, budget: int) -> list[dict] | None:
    """The prompt for a chunk within `budget` tokens, the chunk cut short if need be (None: no room)."""
    from core.models import count_chat_tokens
    from core.models.generation import fold_system_turn_if_refused

    body = f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text
    for _ in range(4):
        messages = fold_system_turn_if_refused(loaded, qa_messages(body))
        over = count_chat_tokens(loaded, messages) - budget
        if over <= 0:
            return messages
        ids = loaded.tokenizer(body, add_special_tokens=False)["input_ids"]
        keep = len(ids) - over - 8  # a margin: text re-tokenizes a little differently once cut
        if keep < 16:
            return None
        body = loaded.tokenizer.decode(ids[:keep]) + " …"
    return None


_LABEL = re.compile(r"^[\s>#*_\-\d.)]*(question|answer|q|a)\s*[*_]*\s*[:：]\s*[*_]*\s*", re.IGNORECASE)
# "Question: … Answer: …" on one line; a bare "A:" only after the question's end ("Plan A: …" stays).
_INLINE_ANSWER = re.compile(r"(?<=\S)[ \t]+(?=[*_]*answer[*_]*\s*[:：])|(?<=[?.!*])[ \t]+(?=[*_]*a[*_]*\s*[:：])", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?…)\]\"”](?=\s|$)")


def parse_qa(reply: str, *, cut_off: bool = False) -> QAPair | None:
    """The first "Question: … / Answer: …" of a reply; markdown bold, numbering, "Q:"/"A:" and both
    on one line are fine. With `cut_off` (the reply hit the token limit) an answer that runs to the
    end is kept up to its last full sentence, or dropped when it has none."""
    question: list[str] = []
    answer: list[str] = []
    current: list[str] | None = None
    complete = False
    for line in _INLINE_ANSWER.sub("\n", reply).splitlines():
        match = _LABEL.match(line)
        label = match.group(1)[0].lower() if match else None
        if label == "q" and answer:
            complete = True  # the next pair begins: the first one is whole
            break
        if label == "q" or (label == "a" and question and current is question):
            current = question if label == "q" else answer
            line = line[match.end():]
        if current is not None:
            current.append(line)
    text_q = " ".join(part.strip() for part in question).strip().strip("*_ ")
    text_a = "\n".join(answer).strip().strip("*_ ")
    if cut_off and not complete:
        ends = list(_SENTENCE_END.finditer(text_a))
        text_a = text_a[: ends[-1].end()] if ends else ""
    if len(text_q.split()) < 2 or not text_a or text_q == EXAMPLE_QUESTION or ("<" in text_q and ">" in text_q):
        return None
    return QAPair(clean_text(text_q), clean_text(text_a))


# --- plain text -------------------------------------------------------------------------------


def generate_text_dataset(db: Database, name: str, collection: str, *, max_chunks: int | None = None,
                          validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0,
                          exclude_document_ids: Iterable[int] | None = None) -> DatasetInfo:
    """One plain-text example per chunk (continued pre-training on the documents' own words), leaving
    out the documents of `exclude_document_ids` (default: the documents of the collection's exams)."""
    name = ensure_name_free(db, name)
    origin = get_collection(db, collection)
    available, excluded = training_chunks(db, origin, exclude_document_ids)
    chunks = sample_evenly(available, max_chunks)
    examples = [NewExample(text=clean_text(c.text), document_id=c.document_id, chunk_id=c.id) for c in chunks if c.text.strip()]
    return write_dataset(db, name, kind="text", source=f"text of {len(examples):,} chunks from {collection!r}" + _left_out(excluded),
                         examples=examples, collection_id=origin.id, validation_fraction=validation_fraction, seed=seed)


# --- chunks -----------------------------------------------------------------------------------


def training_chunks(db: Database, origin: CollectionInfo, exclude_document_ids: Iterable[int] | None = None
                    ) -> tuple[list[ChunkText], int]:
    """(the collection's chunks that training data may use, how many were left out). None of
    `exclude_document_ids` is used; by default those are the documents the collection's exams ask
    about, so no exam question is answered by text a model was trained on."""
    if exclude_document_ids is None:
        exclude_document_ids = exam_document_ids(db, origin.id)
    excluded = set(exclude_document_ids)
    chunks = collection_chunks(db, origin.id)
    kept = [c for c in chunks if c.document_id not in excluded]
    if not kept:
        raise DatasetError(
            f"Every document of collection {origin.name!r} is held out for an exam, so there is nothing left to train on: "
            "add documents to the collection, or delete the exam that uses them."
        )
    if len(kept) < len(chunks):
        logger.info("Left out %d chunks of %d exam documents of collection %r.", len(chunks) - len(kept),
                    len({c.document_id for c in chunks} & excluded), origin.name)
    return kept, len(chunks) - len(kept)


# Evaluation's tables read from datasets: datasets sit below evaluation in the layers; the exam tables are read, never written.
def exam_document_ids(db: Database, collection_id: int) -> set[int]:
    """The documents that any exam of the collection asks about (core.evaluation.exams): training
    data leaves them out. Read here, from the exam tables, because evaluation builds on datasets."""
    with db.engine.connect() as connection:
        return set(connection.execute(
            sql("SELECT DISTINCT q.document_id FROM exam_questions q JOIN exams e ON e.id = q.exam_id "
                "WHERE e.collection_id = :c AND q.document_id IS NOT NULL"), {"c": collection_id}).scalars())


def _left_out(excluded: int) -> str:
    return f" ({excluded:,} chunks of exam documents left out)" if excluded else ""



def collection_chunks(db: Database, collection_id: int) -> list[ChunkText]:
    """Every chunk of a collection in reading order (core.documents.library); refuses an empty collection."""
    chunks = library.collection_chunks(db, collection_id)
    if not chunks:
        name = next((c.name for c in library.list_collections(db) if c.id == collection_id), None)
        raise DatasetError(f"Collection {name!r} has no documents yet: add documents to it first.")
    return chunks


def sample_evenly(items: Sequence, count: int | None) -> list:
    """`count` items spread evenly from first to last (all of them when count is None or larger)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise DatasetError(f"Use at least 1 chunk; got {count}.")
    return [items[(2 * i + 1) * len(items) // (2 * count)] for i in range(count)]
