"""Exams: questions with reference answers that evaluation runs score the model variants on, each
linked to the document (and chunk) it is about. An exam is imported from a JSONL/CSV file or
generated from a collection's held-out documents, and can be listed, edited, exported and deleted.
See docs/evaluation.md ("Exams").

    preview = preview_exam(db, "exam.jsonl", data, collection="manuals")  # writes nothing
    save_exam(db, "manuals-exam", preview)                                # one transaction
    check_no_leakage(db, "manuals-exam", "my-adapter")                    # before scoring an adapter
    exam_document_ids(db, collection_id)                                  # what training data leaves out

Leakage is ruled out by construction: the documents an exam asks about are left out of training
data generated from the same collection (`exam_document_ids`), and `check_no_leakage` refuses an
adapter whose training set contains an example from one of them or asks one of its questions.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError

from core.config import Settings
from core.datasets.errors import DatasetError
from core.datasets.files import FILE_TYPE_LABELS, FileType, json_kind, read_file, read_records
from core.datasets.formats import RowProblem, clean_text
from core.datasets.generation import (
    DEFAULT_QA_NEW_TOKENS,
    TOO_LONG,
    collection_chunks,
    exam_document_ids,  # noqa: F401 (part of this module's interface: what training data leaves out)
    fit_qa_prompt,
    judge_reply,
    sample_evenly,
)
from core.db import Database
from core.documents.library import CollectionInfo, get_collection
from core.errors import UserError
from core.formatting import human_size, plural

MAX_EXAM_BYTES = 20 * 2**20
OUT_OF_SCOPE_ANSWER = "The documents do not say."
DEFAULT_HELDOUT_FRACTION = 0.2
DEFAULT_EXAM_QUESTIONS = 25

# Generic questions no domain document is likely to answer: the right answer is OUT_OF_SCOPE_ANSWER.
OUT_OF_SCOPE_QUESTIONS = (
    "What is the boiling point of tungsten?",
    "Who won the 1954 FIFA World Cup?",
    "What is the capital of Mongolia?",
    "How many moons does Neptune have?",
    "Who painted The Night Watch?",
    "In what year did the Byzantine Empire fall?",
    "Which composer wrote The Magic Flute?",
    "What is the national dish of Peru?",
    "How tall is Mount Kilimanjaro?",
    "Who wrote the novel Things Fall Apart?",
    "Which language is spoken in Suriname?",
    "How long is the pregnancy of a giraffe?",
    "Which element has the atomic number 76?",
    "Who first swam across the English Channel?",
    "When was the Suez Canal opened?",
    "What is the main ingredient of hummus?",
    "Which river flows through Baghdad?",
    "How far is Mars from the Sun?",
    "Who discovered penicillin?",
    "What is the population of Reykjavik?",
)

# Field names, lower-cased, with the aliases each accepts (the first one present in a row is used).
FIELDS: dict[str, tuple[str, ...]] = {
    "question": ("question",),
    "reference_answer": ("reference_answer", "answer", "reference"),
    "source_document": ("source_document", "document"),
    "source_passage": ("source_passage", "passage"),
    "out_of_scope": ("out_of_scope",),
}
EXPECTED = ("'question' and 'reference_answer' (or 'answer', 'reference'); optionally 'source_document', "
            "'source_passage' and 'out_of_scope'")
_TRUE, _FALSE = ("true", "1", "yes", "y"), ("false", "0", "no", "n", "")


class ExamError(UserError):
    """An exam request that cannot be carried out as given; the message says why and what to do."""


@dataclass(frozen=True)
class ExamInfo:
    id: int
    name: str
    collection: str | None  # None once the collection is deleted
    source: str  # "import" or "generated"
    created_at: datetime
    settings: dict  # the file it came from, or the model, seed and held-out documents of a generation
    question_count: int = 0
    out_of_scope_count: int = 0
    document_count: int = 0  # documents its questions are linked to
    run_count: int = 0  # evaluation runs on it (an edit changes what their scores mean)


@dataclass(frozen=True)
class ExamQuestion:
    id: int
    ordinal: int
    question: str
    reference_answer: str
    out_of_scope: bool
    source_document: str | None  # the file name as given (or of the chunk it was generated from)
    source_passage: str | None
    document_id: int | None
    chunk_id: int | None
    source_row: int | None  # the file line it was imported from


@dataclass(frozen=True)
class Exam:
    info: ExamInfo
    questions: list[ExamQuestion]

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class NewQuestion:
    """A question to save: from a file row (`source_row`) or generated from a chunk."""

    question: str
    reference_answer: str
    out_of_scope: bool = False
    source_document: str | None = None
    source_passage: str | None = None
    document_id: int | None = None
    chunk_id: int | None = None
    source_row: int | None = None


@dataclass(frozen=True)
class ExamPreview:
    filename: str
    file_type: FileType
    encoding: str
    columns: list[str]
    collection: str
    collection_id: int
    questions: list[NewQuestion]  # the rows that will be saved
    problems: list[RowProblem]  # every row that will not, in file order
    notes: list[str]

    @property
    def out_of_scope_count(self) -> int:
        return sum(q.out_of_scope for q in self.questions)

    @property
    def linked_count(self) -> int:
        """Questions linked to a chunk (their passage was found)."""
        return sum(q.chunk_id is not None for q in self.questions)

    @property
    def summary(self) -> str:
        problems = plural(len(self.problems), "row") + " with problems" if self.problems else "no problems"
        return (f"{self.filename} ({FILE_TYPE_LABELS[self.file_type]}): {plural(len(self.questions), 'valid question')} "
                f"({self.out_of_scope_count:,} out of scope, {self.linked_count:,} linked to a passage of {self.collection!r}), "
                f"{problems}.")

    def problem_list(self, limit: int | None = 20) -> str:
        """The problems one per line, the first `limit` of them (None: all)."""
        shown = self.problems if limit is None else self.problems[:limit]
        more = len(self.problems) - len(shown)
        return "\n".join([*map(str, shown), *([f"… and {more:,} more"] if more else [])])


# --- names ------------------------------------------------------------------------------------


def validate_exam_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ExamError("An exam needs a name.")
    if len(name) > 100:
        raise ExamError(f"Exam names are at most 100 characters; this one has {len(name)}.")
    if re.search(r"[\x00-\x1f]", name):
        raise ExamError("An exam name cannot contain control characters.")
    return name


def _name_taken(name: str) -> ExamError:
    return ExamError(f"An exam named {name!r} already exists; choose another name, or delete that exam first.")


def ensure_exam_name_free(db: Database, name: str) -> str:
    """Check before slow work that the name can be used; returns it cleaned."""
    name = validate_exam_name(name)
    with db.engine.connect() as connection:
        if connection.execute(sql("SELECT 1 FROM exams WHERE name = :n"), {"n": name}).first():
            raise _name_taken(name)
    return name


# --- import: file → checked questions ---------------------------------------------------------


def preview_exam_file(db: Database, path: str | Path, *, collection: str) -> ExamPreview:
    """preview_exam of a file on disk; a missing or unreadable file raises ExamError."""
    path = Path(path)
    try:  # by its size on disk before it is read
        data = read_file(path, max_bytes=MAX_EXAM_BYTES, kind="exam file", advice="Split it into several exams.")
    except DatasetError as error:
        raise ExamError(str(error).replace("training file", "exam file")) from None
    return preview_exam(db, path.name, data, collection=collection)


def preview_exam(db: Database, filename: str, data: bytes, *, collection: str) -> ExamPreview:
    """Read and check an exam file (JSON Lines, a JSON array, or CSV) against `collection`; writes
    nothing. Every bad row is listed with its line and all its problems; ExamError only when the file
    as a whole is unusable (too large, empty, not text, no 'question' column)."""
    origin = get_collection(db, collection)
    if len(data) > MAX_EXAM_BYTES:
        raise ExamError(f"{filename} is {human_size(len(data))}; exam files are at most {human_size(MAX_EXAM_BYTES)}. "
                        "Split it into several exams.")
    try:
        file_type, encoding, columns, records = read_records(filename, data, max_bytes=MAX_EXAM_BYTES)
    except DatasetError as error:
        raise ExamError(str(error)) from None
    readable = [r for r in records if r.fields is not None]
    if not any("question" in r.fields for r in readable):
        found = ", ".join(repr(c) for c in columns[:20]) or "none"
        raise ExamError(f"{filename}: no 'question' field. Found {found}; expected {EXPECTED}.")
    if file_type == "csv" and not any(alias in columns for alias in FIELDS["reference_answer"]):
        raise ExamError(f"{filename} has no reference answer column ('reference_answer', 'answer' or 'reference'). "
                        f"Found {', '.join(map(repr, columns))}.")
    documents = _Documents(db, origin)
    questions: list[NewQuestion] = []
    problems: list[RowProblem] = []
    first_row: dict[str, int] = {}  # normalized question -> the row that asked it first
    for record in records:
        if record.fields is None:
            problems.append(RowProblem(record.row, record.problem or "cannot be read"))
            continue
        question, row_problems = _question_of(record.row, record.fields, documents)
        key = _normal_question(question.question) if question else None
        if key and key in first_row:
            row_problems.append(f"duplicate question (same as line {first_row[key]}, ignoring case)")
        elif key:
            first_row[key] = record.row
        if row_problems:
            problems.append(RowProblem(record.row, "; ".join(row_problems)))
        else:
            questions.append(question)
    notes = [f"Not UTF-8: read as {encoding}."] if encoding not in ("utf-8", "utf-8-sig") else []
    known = {alias for aliases in FIELDS.values() for alias in aliases}
    ignored = [c for c in columns if c not in known]
    if ignored:
        notes.append("Ignored fields: " + ", ".join(map(repr, ignored)) + ".")
    return ExamPreview(filename, file_type, encoding, columns, origin.name, origin.id, questions, problems, notes)


def _question_of(row: int, fields: dict, documents: _Documents) -> tuple[NewQuestion | None, list[str]]:
    """One record as a question to save (None when its text is unusable), and all its problems."""
    problems: list[str] = []

    def text_field(name: str) -> tuple[str | None, str | None]:  # (value, the alias it came from)
        for alias in FIELDS[name]:
            value = fields.get(alias)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                problems.append(f"field {alias!r} must be text, not {json_kind(value)}")
                return None, alias
            return clean_text(str(value)), alias
        return None, None

    question, question_alias = text_field("question")
    answer, answer_alias = text_field("reference_answer")
    document, _ = text_field("source_document")
    passage, _ = text_field("source_passage")
    out_of_scope = _boolean(fields.get("out_of_scope"), problems)
    if question is None and question_alias is None:
        problems.append("missing field 'question'")
    elif question == "":
        problems.append("empty question")
    if out_of_scope and not answer:
        answer = OUT_OF_SCOPE_ANSWER  # the one right answer of an out-of-scope question
    elif answer is None and answer_alias is None:
        problems.append("missing field 'reference_answer' (or 'answer', 'reference')")
    elif answer == "":
        problems.append("empty reference answer")
    document, passage = document or None, passage or None
    document_id = chunk_id = None
    if out_of_scope and (document or passage):
        problems.append("an out-of-scope question cannot have a source document or passage")
    elif document or passage:
        document_id, chunk_id, why = documents.locate(document, passage)
        if why:
            problems.append(why)
    if not question:
        return None, problems
    return NewQuestion(question, answer or "", bool(out_of_scope), document, passage, document_id, chunk_id, row), problems


def _boolean(value, problems: list[str]) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    shown = repr(value) if isinstance(value, str | int | float) else json_kind(value)
    problems.append(f"'out_of_scope' must be true or false (or 1/0, yes/no), not {shown}")
    return False


def _normal_question(question: str) -> str:
    return " ".join(question.split()).lower()


# --- passages → documents and chunks ----------------------------------------------------------

_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\u2013": "-",
                        "\u2014": "-", "\u00ad": " "})
_PASSAGE_ENDS = re.compile(r"^[\s\"'“”‘’….]+|[\s\"'“”‘’….]+$")


def normalized(text: str) -> tuple[str, list[int]]:
    """`text` lower-cased, each run of whitespace one space, typographic quotes and dashes plain; and
    for each character of that, the offset in `text` it comes from."""
    out: list[str] = []
    where: list[int] = []
    space = True  # no leading space
    for offset, char in enumerate(text.translate(_PLAIN)):
        if char.isspace():
            if not space:
                out.append(" ")
                where.append(offset)
            space = True
            continue
        space = False
        for lower in char.lower():
            out.append(lower)
            where.append(offset)
    return "".join(out).rstrip(), where


@dataclass
class _DocumentText:
    id: int
    filename: str
    text: str  # the document's text rebuilt from its chunks (their offsets), gaps as spaces
    chunks: list[tuple[int, int, int]]  # (chunk id, start, end) in reading order
    _normal: tuple[str, list[int]] | None = None

    def find(self, passage: str) -> tuple[int, int] | None:
        """(start, end) of the passage in the text, ignoring case, spacing and typographic quotes."""
        if self._normal is None:
            self._normal = normalized(self.text)
        text, where = self._normal
        needle = normalized(_PASSAGE_ENDS.sub("", passage))[0]
        position = text.find(needle) if needle else -1
        if position < 0:
            return None
        return where[position], where[position + len(needle) - 1] + 1

    def chunk_of(self, start: int, end: int) -> int | None:
        """The chunk that holds most of [start, end) (the first of equals)."""
        best, best_overlap = None, 0
        for chunk_id, chunk_start, chunk_end in self.chunks:
            overlap = min(end, chunk_end) - max(start, chunk_start)
            if overlap > best_overlap:
                best, best_overlap = chunk_id, overlap
        return best


class _Documents:
    """A collection's documents by file name, each document's text read once, when a row needs it."""

    def __init__(self, db: Database, origin: CollectionInfo):
        self.db, self.origin = db, origin
        with db.engine.connect() as connection:
            rows = connection.execute(sql("SELECT id, filename FROM documents WHERE collection_id = :c ORDER BY id DESC"),
                                      {"c": origin.id}).all()
        self.by_name: dict[str, list[tuple[int, str]]] = {}
        for row in rows:  # newest first: a name given twice means the newest document of that name
            for key in {row.filename, row.filename.lower(), Path(row.filename).name.lower()}:
                self.by_name.setdefault(key, []).append((row.id, row.filename))
        self.filenames = sorted({row.filename for row in rows})
        self.texts: dict[int, _DocumentText] = {}

    def named(self, name: str) -> list[tuple[int, str]]:
        for key in (name, name.lower(), Path(name).name.lower()):
            if key in self.by_name:
                return self.by_name[key]
        return []

    def text(self, document_id: int, filename: str) -> _DocumentText:
        if document_id not in self.texts:
            with self.db.engine.connect() as connection:
                rows = connection.execute(
                    sql("SELECT id, text, char_start FROM chunks WHERE document_id = :d ORDER BY char_start, ordinal"),
                    {"d": document_id}).all()
            parts: list[str] = []
            chunks = []
            end = 0
            for row in rows:
                if row.char_start > end:
                    parts.append(" " * (row.char_start - end))
                    end = row.char_start
                if row.char_start + len(row.text) > end:
                    parts.append(row.text[end - row.char_start:])
                    end = row.char_start + len(row.text)
                chunks.append((row.id, row.char_start, row.char_start + len(row.text)))
            self.texts[document_id] = _DocumentText(document_id, filename, "".join(parts), chunks)
        return self.texts[document_id]

    def locate(self, document: str | None, passage: str | None) -> tuple[int | None, int | None, str | None]:
        """(document id, chunk id, problem): the named document, and the chunk holding most of the
        passage; without a document name, the first document whose text holds the passage."""
        if document:
            candidates = self.named(document)
            if not candidates:
                close = difflib.get_close_matches(document, self.filenames, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return None, None, f"unknown source document {document!r}: collection {self.origin.name!r} has no document of that name{hint}"
        else:
            candidates = [(i, f) for f in self.filenames for i, _ in self.named(f)[:1]]
        if not passage:
            return candidates[0][0], None, None
        for document_id, filename in candidates:
            text = self.text(document_id, filename)
            span = text.find(passage)
            if span:
                return document_id, text.chunk_of(*span), None
        shown = passage if len(passage) <= 60 else passage[:57] + "…"
        where = f"{candidates[0][1]!r}" if document else f"any document of collection {self.origin.name!r}"
        return None, None, f"source passage not found in {where} (compared ignoring case and spacing): {shown!r}"


# --- saving -----------------------------------------------------------------------------------


def save_exam(db: Database, name: str, preview: ExamPreview, *, skip_bad_rows: bool = False) -> ExamInfo:
    """Save a previewed file's questions as an exam, in one transaction. With bad rows, refuses
    (listing them) unless `skip_bad_rows`."""
    if preview.problems and not skip_bad_rows:
        raise ExamError(
            f"{preview.filename}: {plural(len(preview.problems), 'row')} cannot be used:\n{preview.problem_list()}\n"
            "Fix them and import again, or choose to skip the bad rows."
        )
    if not preview.questions:
        raise ExamError(f"{preview.filename} has no valid question, so there is nothing to save.")
    settings = {"file": preview.filename, "format": preview.file_type, "skipped_rows": len(preview.problems)}
    return write_exam(db, name, source="import", collection_id=preview.collection_id, questions=preview.questions,
                      settings=settings)


def write_exam(db: Database, name: str, *, source: str, collection_id: int, questions: list[NewQuestion],
               settings: dict) -> ExamInfo:
    """The exam row and all its questions in one transaction: a failure leaves nothing."""
    name = validate_exam_name(name)
    if not questions:
        raise ExamError(f"Exam {name!r} would have no questions.")
    try:
        with db.engine.begin() as connection:
            exam_id = connection.execute(
                sql("INSERT INTO exams (name, collection_id, source, settings) VALUES (:n, :c, :s, CAST(:settings AS jsonb)) "
                    "RETURNING id"),
                {"n": name, "c": collection_id, "s": source, "settings": json.dumps(settings)},
            ).scalar_one()
            connection.execute(
                sql("INSERT INTO exam_questions (exam_id, ordinal, question, reference_answer, out_of_scope, source_document, "
                    "source_passage, document_id, chunk_id, source_row) VALUES (:e, :o, :q, :a, :x, :doc, :p, :d, :c, :r)"),
                [{"e": exam_id, "o": ordinal, "q": q.question, "a": q.reference_answer, "x": q.out_of_scope,
                  "doc": q.source_document, "p": q.source_passage, "d": q.document_id, "c": q.chunk_id, "r": q.source_row}
                 for ordinal, q in enumerate(questions)],
            )
    except IntegrityError as error:
        constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
        if constraint == "exams_name_key":
            raise _name_taken(name) from error
        if constraint in ("exam_questions_document_id_fkey", "exam_questions_chunk_id_fkey", "exams_collection_id_fkey"):
            raise ExamError("A document of the collection was deleted or replaced while the exam was checked; "
                            "check the file again, then save.") from error
        if constraint == "exam_questions_unique_text":
            raise ExamError(f"Exam {name!r} would ask the same question twice (ignoring case).") from error
        raise
    return get_exam(db, name).info


# --- reading ----------------------------------------------------------------------------------

_EXAMS = """
SELECT e.id, e.name, c.name AS collection, e.source, e.created_at, e.settings,
       count(q.id) AS question_count, count(q.id) FILTER (WHERE q.out_of_scope) AS out_of_scope_count,
       count(DISTINCT q.document_id) AS document_count,
       (SELECT count(*) FROM eval_runs r WHERE r.exam_id = e.id) AS run_count
FROM exams e
LEFT JOIN collections c ON c.id = e.collection_id
LEFT JOIN exam_questions q ON q.exam_id = e.id
{where}
GROUP BY e.id, c.name
ORDER BY e.name
"""
_QUESTIONS = ("SELECT id, ordinal, question, reference_answer, out_of_scope, source_document, source_passage, document_id, "
              "chunk_id, source_row FROM exam_questions")


def list_exams(db: Database, collection: str | None = None) -> list[ExamInfo]:
    """Every exam by name, or those of one collection."""
    where, values = ("WHERE e.collection_id = :c", {"c": get_collection(db, collection).id}) if collection else ("", {})
    with db.engine.connect() as connection:
        return [ExamInfo(**row._mapping) for row in connection.execute(sql(_EXAMS.format(where=where)), values)]


def get_exam(db: Database, name: str) -> Exam:
    """An exam with its questions in order."""
    with db.engine.connect() as connection:
        row = connection.execute(sql(_EXAMS.format(where="WHERE e.name = :n")), {"n": name}).first()
        if row is None:
            known = connection.scalars(sql("SELECT name FROM exams ORDER BY name")).all()
            hint = f" Existing exams: {', '.join(known)}." if known else " There are no exams yet: import or generate one."
            raise ExamError(f"No exam named {name!r}.{hint}")
        questions = connection.execute(sql(_QUESTIONS + " WHERE exam_id = :e ORDER BY ordinal"), {"e": row.id}).all()
    return Exam(ExamInfo(**row._mapping), [ExamQuestion(**q._mapping) for q in questions])


def delete_exam(db: Database, name: str) -> int:
    """Delete an exam with its questions and the evaluation runs on it; returns how many questions went."""
    exam = get_exam(db, name).info
    with db.engine.begin() as connection:
        connection.execute(sql("DELETE FROM exams WHERE id = :e"), {"e": exam.id})
    return exam.question_count


def export_exam(db: Database, name: str) -> str:
    """The exam as JSON Lines in the import format (importing it again gives the same questions)."""
    lines = [json.dumps({"question": q.question, "reference_answer": q.reference_answer, "source_document": q.source_document,
                         "source_passage": q.source_passage, "out_of_scope": q.out_of_scope}, ensure_ascii=False)
             for q in get_exam(db, name).questions]
    return "\n".join(lines) + "\n"


# --- editing ----------------------------------------------------------------------------------


def update_question(db: Database, question_id: int, question: str | None = None, reference_answer: str | None = None,
                    out_of_scope: bool | None = None) -> ExamQuestion:
    """Change a question's text, its reference answer or its out-of-scope flag (None: unchanged)."""
    edit = {"id": question_id, "question": question, "reference_answer": reference_answer, "out_of_scope": out_of_scope}
    with db.engine.begin() as connection:
        exam_id = _exam_of(connection, question_id)
        _apply_edits(connection, exam_id, [{k: v for k, v in edit.items() if v is not None}])
        row = connection.execute(sql(_QUESTIONS + " WHERE id = :i"), {"i": question_id}).one()
    return ExamQuestion(**row._mapping)


def delete_question(db: Database, question_id: int) -> None:
    """Drop one question (and its answers in evaluation runs)."""
    with db.engine.begin() as connection:
        _exam_of(connection, question_id)
        connection.execute(sql("DELETE FROM exam_questions WHERE id = :i"), {"i": question_id})


def save_question_edits(db: Database, exam: str, edits: Iterable[dict]) -> tuple[int, int]:
    """Apply a table of edits to an exam in one transaction: each dict has the question's `id` and
    any of `question`, `reference_answer`, `out_of_scope`, or `delete: True`. Unchanged rows are
    skipped; any bad edit refuses them all. Returns (questions changed, questions deleted)."""
    exam_id = get_exam(db, exam).id
    with db.engine.begin() as connection:
        return _apply_edits(connection, exam_id, list(edits))


def _exam_of(connection: Connection, question_id: int) -> int:
    exam_id = connection.execute(sql("SELECT exam_id FROM exam_questions WHERE id = :i FOR UPDATE"), {"i": question_id}).scalar()
    if exam_id is None:
        raise ExamError(f"No exam question with id {question_id}; it may have been deleted.")
    return exam_id


def _apply_edits(connection: Connection, exam_id: int, edits: list[dict]) -> tuple[int, int]:
    rows = {r.id: r for r in connection.execute(sql(_QUESTIONS + " WHERE exam_id = :e ORDER BY ordinal FOR UPDATE"),
                                                {"e": exam_id})}
    final = {i: {"question": r.question, "reference_answer": r.reference_answer, "out_of_scope": r.out_of_scope}
             for i, r in rows.items()}
    deleted: set[int] = set()
    problems: list[str] = []
    for edit in edits:
        question_id = int(edit["id"])
        if question_id not in rows:
            problems.append(f"question {question_id} is not in this exam (deleted meanwhile?)")
            continue
        if edit.get("delete"):
            deleted.add(question_id)
            continue
        number = rows[question_id].ordinal + 1
        for key in ("question", "reference_answer"):
            if key in edit and edit[key] is not None:
                value = clean_text(str(edit[key]))
                if not value:
                    problems.append(f"question #{number}: the {key.replace('_', ' ')} cannot be empty")
                final[question_id][key] = value
        if "out_of_scope" in edit and edit["out_of_scope"] is not None:
            final[question_id]["out_of_scope"] = bool(edit["out_of_scope"])
    seen: dict[str, int] = {}
    edited = {int(edit["id"]) for edit in edits}
    for question_id in sorted(final, key=lambda i: (i in edited, rows[i].ordinal)):  # an edit is the one that repeats
        values = final[question_id]
        key = _normal_question(values["question"])
        if question_id in deleted or not key:
            continue
        if key in seen:
            problems.append(f"question #{rows[question_id].ordinal + 1} asks the same as #{rows[seen[key]].ordinal + 1}: "
                            f"{values['question']!r}")
        seen[key] = question_id
    if problems:
        raise ExamError("Not saved: " + "; ".join(problems) + ".")
    changed = [i for i, values in final.items() if i not in deleted and values != {
        "question": rows[i].question, "reference_answer": rows[i].reference_answer, "out_of_scope": rows[i].out_of_scope}]
    if deleted:
        connection.execute(sql("DELETE FROM exam_questions WHERE id = ANY(CAST(:ids AS bigint[]))"), {"ids": sorted(deleted)})
    if changed:
        # Two questions may swap texts: clear the changed ones first, so the unique index never sees both.
        connection.execute(sql("UPDATE exam_questions SET question = chr(1) || id WHERE id = ANY(CAST(:ids AS bigint[]))"),
                           {"ids": changed})
        connection.execute(
            sql("UPDATE exam_questions SET question = :q, reference_answer = :a, out_of_scope = :x WHERE id = :i"),
            [{"i": i, "q": final[i]["question"], "a": final[i]["reference_answer"], "x": final[i]["out_of_scope"]}
             for i in changed],
        )
    return len(changed), len(deleted)


# --- leakage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakageCheck:
    """What `check_no_leakage` found when it did not refuse."""

    exam: str
    adapter: str
    dataset: str | None  # the adapter's training set, when its record names one that still exists
    examples_checked: int
    verified: bool  # False: the training data could not be read (see `note`); nothing was found either way
    note: str = ""


def check_no_leakage(db: Database, exam_name: str, adapter_name: str) -> LeakageCheck:
    """Refuse (ExamError, with the reason) an adapter whose training set has an example from a document
    the exam asks about, or an example whose question is one of the exam's (ignoring case and spacing).
    An adapter whose training set cannot be read (imported from elsewhere, its dataset deleted or made
    again after training) is not refused: the result says it is unverified and why."""
    from core.jobs.artifacts import get_artifact
    from core.models.adapters import KIND, adapter_record

    exam = get_exam(db, exam_name)
    record = adapter_record(db, adapter_name)  # AdapterError when there is no such adapter
    dataset_name = record.get("dataset")
    if not dataset_name:
        return LeakageCheck(exam.name, adapter_name, None, 0, False,
                            f"Adapter {adapter_name!r} has no training record (it was imported), so its training data "
                            f"cannot be checked against exam {exam.name!r}.")
    with db.engine.connect() as connection:
        dataset = connection.execute(sql("SELECT id, created_at FROM datasets WHERE name = :n"), {"n": dataset_name}).first()
        artifact = get_artifact(db, KIND, adapter_name)
        if dataset is None or (artifact is not None and artifact.created_at and dataset.created_at > artifact.created_at):
            why = "has been deleted" if dataset is None else "was made again after the adapter was trained"
            return LeakageCheck(exam.name, adapter_name, None, 0, False,
                                f"The training set {dataset_name!r} of adapter {adapter_name!r} {why}, so its training "
                                f"data cannot be checked against exam {exam.name!r}.")
        examples = connection.execute(sql("SELECT count(*) FROM training_examples WHERE dataset_id = :d"),
                                      {"d": dataset.id}).scalar_one()
        shared = connection.execute(
            sql("SELECT d.filename, count(*) AS n FROM training_examples t JOIN documents d ON d.id = t.document_id "
                "WHERE t.dataset_id = :d AND t.document_id IN (SELECT document_id FROM exam_questions WHERE exam_id = :e) "
                "GROUP BY d.filename ORDER BY d.filename"),
            {"d": dataset.id, "e": exam.id}).all()
        asked = connection.execute(
            sql("SELECT count(DISTINCT t.id) AS n, min(q.question) AS example FROM training_examples t "
                "CROSS JOIN LATERAL jsonb_array_elements(t.messages) m "
                "CROSS JOIN LATERAL (SELECT lower(regexp_replace(btrim(m->>'content'), '\\s+', ' ', 'g')) AS said) u "
                "JOIN exam_questions q ON q.exam_id = :e "
                "CROSS JOIN LATERAL (SELECT lower(regexp_replace(btrim(q.question), '\\s+', ' ', 'g')) AS asked) a "
                # a plain pair asks the question itself; a RAFT example ends its user turn with it
                "WHERE t.dataset_id = :d AND t.messages IS NOT NULL AND m->>'role' = 'user' "
                "  AND (u.said = a.asked OR right(u.said, length(a.asked) + 10) = 'question: ' || a.asked)"),
            {"d": dataset.id, "e": exam.id}).one()
    reasons = []
    if shared:
        names = ", ".join(repr(r.filename) for r in shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
        count = sum(r.n for r in shared)
        reasons.append(f"{plural(count, 'training example')} {'comes' if count == 1 else 'come'} from "
                       f"{plural(len(shared), 'document')} the exam asks about ({names})")
    if asked.n:
        reasons.append(f"{plural(asked.n, 'training example')} {'asks' if asked.n == 1 else 'ask'} an exam question "
                       f"(e.g. {asked.example!r})")
    if reasons:
        raise ExamError(
            f"Adapter {adapter_name!r} cannot be evaluated on exam {exam.name!r}: its training set {dataset_name!r} "
            f"overlaps the exam — {' and '.join(reasons)}. Its scores would measure memory, not knowledge. Train an adapter "
            "on training data generated after the exam (generation leaves the exam's documents out), or use an exam on "
            "other documents."
        )
    return LeakageCheck(exam.name, adapter_name, dataset_name, int(examples), True)


# --- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutDocument:
    id: int
    filename: str
    chunk_count: int


@dataclass(frozen=True)
class ExamGenerationReport:
    exam: ExamInfo
    heldout: list[HeldOutDocument]
    chunks: int  # chunks the model read
    questions: int  # in-scope questions kept
    out_of_scope: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unparsed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def message(self) -> str:
        names = ", ".join(d.filename for d in self.heldout[:5]) + (" …" if len(self.heldout) > 5 else "")
        text = (f"Exam {self.exam.name!r}: {plural(self.questions, 'question')} from {plural(self.chunks, 'chunk')} of "
                f"{plural(len(self.heldout), 'held-out document')} ({names})")
        text += f", and {self.out_of_scope:,} out of scope." if self.out_of_scope else "."
        if self.dropped:
            text += f" Dropped {sum(self.dropped.values()):,}: " + "; ".join(f"{n:,} {r}" for r, n in self.dropped.items()) + "."
        return " ".join([text, *self.notes])


def check_generation(*, heldout_fraction: float, questions: int, out_of_scope: int, max_new_tokens: int) -> None:
    """The settings of a generation that can be checked without the database or a model."""
    if not 0 < heldout_fraction < 1:
        raise ExamError(f"The held-out fraction is a share of the documents between 0 and 1 (e.g. 0.2), not {heldout_fraction}.")
    if questions < 1:
        raise ExamError(f"Ask for at least 1 question; got {questions}.")
    if not 0 <= out_of_scope <= len(OUT_OF_SCOPE_QUESTIONS):
        raise ExamError(f"Out-of-scope questions: 0 to {len(OUT_OF_SCOPE_QUESTIONS)} (the built-in list); got {out_of_scope}.")
    if max_new_tokens < 16:
        raise ExamError(f"A question and its answer need room: allow at least 16 new tokens, not {max_new_tokens}.")


def choose_heldout_documents(db: Database, collection: str, *, fraction: float = DEFAULT_HELDOUT_FRACTION, seed: int = 0,
                             documents: Sequence[int | str] | None = None) -> list[HeldOutDocument]:
    """The documents an exam is drawn from: `documents` (ids or file names) when given; else a
    `fraction` of the collection's documents (at least 1, and never all of them when there are two
    or more), drawn with a random generator seeded by `seed`. In id order."""
    origin = get_collection(db, collection)
    with db.engine.connect() as connection:
        rows = connection.execute(
            sql("SELECT d.id, d.filename, count(c.id) AS chunk_count FROM documents d JOIN chunks c ON c.document_id = d.id "
                "WHERE d.collection_id = :c GROUP BY d.id ORDER BY d.id"), {"c": origin.id}).all()
    available = [HeldOutDocument(r.id, r.filename, r.chunk_count) for r in rows]
    if not available:
        raise ExamError(f"Collection {origin.name!r} has no documents yet: add documents to it first.")
    if documents:
        by_id = {d.id: d for d in available}
        chosen: dict[int, HeldOutDocument] = {}
        for wanted in documents:
            matches = ([by_id[wanted]] if wanted in by_id else []) if isinstance(wanted, int) else \
                [d for d in available if d.filename == wanted] or [d for d in available if d.filename.lower() == str(wanted).lower()]
            if not matches:
                raise ExamError(f"Collection {origin.name!r} has no document {wanted!r} to hold out. "
                                f"Its documents: {', '.join(d.filename for d in available[:20])}.")
            chosen.update((d.id, d) for d in matches)
        return sorted(chosen.values(), key=lambda d: d.id)
    count = max(1, round(fraction * len(available)))
    if len(available) > 1:
        count = min(count, len(available) - 1)
    return sorted(random.Random(seed).sample(available, count), key=lambda d: d.id)


def generate_exam(
    db: Database,
    name: str,
    collection: str,
    *,
    model_id: str | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    heldout_documents: Sequence[int | str] | None = None,
    questions: int = DEFAULT_EXAM_QUESTIONS,
    out_of_scope: int = 0,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    progress: Callable[[float], None] | None = None,
    settings: Settings | None = None,
    extra_settings: dict | None = None,
) -> ExamGenerationReport:
    """Draft an exam from held-out documents: the model writes one question and its reference answer
    per chunk (at most `questions` chunks, spread evenly over the held-out documents), greedily and in
    batches, with the prompt and reply checks of training-data generation; each question keeps its
    chunk and document. `out_of_scope` generic questions (answer: "The documents do not say.") are
    added. Nothing is saved when no reply gives a question; raising from `progress` stops the run,
    also without saving. The exam's settings record all of this (plus `extra_settings`)."""
    from core.models import load_model
    from core.models.batch import generate_batch

    started = time.perf_counter()
    max_new_tokens = max_new_tokens or DEFAULT_QA_NEW_TOKENS
    name = ensure_exam_name_free(db, name)
    check_generation(heldout_fraction=heldout_fraction, questions=questions, out_of_scope=out_of_scope,
                     max_new_tokens=max_new_tokens)
    origin = get_collection(db, collection)
    heldout = choose_heldout_documents(db, origin.name, fraction=heldout_fraction, seed=seed, documents=heldout_documents)
    held = {d.id: d for d in heldout}
    chunks = sample_evenly([c for c in collection_chunks(db, origin.id) if c.document_id in held], questions)
    loaded = load_model(model_id, settings=settings)
    if max_new_tokens >= loaded.context_window - 32:
        raise ExamError(f"{max_new_tokens} new tokens leave no room for the text in {loaded.model_id}'s "
                        f"{loaded.context_window}-token window; choose fewer.")
    report = progress or (lambda fraction: None)
    report(0.0)
    drafts: list[NewQuestion] = []
    dropped: dict[str, int] = {}
    unparsed: list[str] = []
    asked: set[str] = set()
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        prompts = [fit_qa_prompt(loaded, chunk, loaded.context_window - max_new_tokens) for chunk in batch]
        fitting = [(chunk, prompt) for chunk, prompt in zip(batch, prompts, strict=True) if prompt is not None]
        if len(fitting) < len(batch):
            dropped[TOO_LONG] = dropped.get(TOO_LONG, 0) + len(batch) - len(fitting)
        answers = generate_batch(loaded, [prompt for _, prompt in fitting], max_new_tokens=max_new_tokens,
                                 batch_size=batch_size) if fitting else []
        for (chunk, _), answer in zip(fitting, answers, strict=True):
            pair, reason = judge_reply(answer.text, chunk, asked, cut_off=answer.stopped_by == "max new tokens")
            if pair is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                if len(unparsed) < 3 and answer.text:
                    unparsed.append(answer.text[:300])
                continue
            asked.add(pair.question.lower())
            drafts.append(NewQuestion(pair.question, pair.answer, source_document=held[chunk.document_id].filename,
                                      source_passage=chunk.text, document_id=chunk.document_id, chunk_id=chunk.id))
        report(min(start + batch_size, len(chunks)) / len(chunks))
    if not drafts:
        first = f" Its first reply began: {unparsed[0][:200]!r}." if unparsed else ""
        raise ExamError(
            f"{loaded.model_id} wrote no usable question from the {plural(len(chunks), 'chunk')} it read "
            f"({'; '.join(f'{n:,} {r}' for r, n in dropped.items())}), so no exam was saved.{first} "
            "Try a larger model or more new tokens, or import an exam you wrote."
        )
    extra = [q for q in random.Random(seed).sample(OUT_OF_SCOPE_QUESTIONS, len(OUT_OF_SCOPE_QUESTIONS))
             if _normal_question(q) not in {_normal_question(d.question) for d in drafts}][:out_of_scope]
    drafts += [NewQuestion(q, OUT_OF_SCOPE_ANSWER, out_of_scope=True) for q in extra]
    record = {"model": loaded.model_id, "heldout_fraction": None if heldout_documents else heldout_fraction, "seed": seed,
              "heldout_documents": [{"id": d.id, "filename": d.filename} for d in heldout], "questions": questions,
              "out_of_scope": out_of_scope, "max_new_tokens": max_new_tokens, "chunks": len(chunks), "dropped": dropped,
              **(extra_settings or {})}
    info = write_exam(db, name, source="generated", collection_id=origin.id, questions=drafts, settings=record)
    notes = _training_overlap_notes(db, list(held))
    return ExamGenerationReport(info, heldout, len(chunks), len(drafts) - len(extra), len(extra), dropped, unparsed, notes,
                                time.perf_counter() - started)


def _training_overlap_notes(db: Database, document_ids: list[int]) -> list[str]:
    """A warning when training sets made before this exam already hold examples of its documents."""
    with db.engine.connect() as connection:
        names = connection.execute(
            sql("SELECT DISTINCT d.name FROM datasets d JOIN training_examples t ON t.dataset_id = d.id "
                "WHERE t.document_id = ANY(CAST(:ids AS bigint[])) ORDER BY d.name"), {"ids": document_ids}).scalars().all()
    if not names:
        return []
    return [f"Training sets made before this exam already use its documents ({', '.join(map(repr, names))}): adapters "
            "trained on them will be refused for this exam. Training data generated from now on leaves these documents out."]
