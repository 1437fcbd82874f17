"""Datasets and their examples in Postgres: a whole dataset is written in one transaction (a
failure leaves nothing), then listed, read, edited, re-split, and handed to the training code.

Every function takes the `Database` first, like core.documents.library, so pages, CLI and tests share them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError

from core.datasets.errors import DatasetError
from core.datasets.formats import RowInvalid, check_messages, clean_text
from core.datasets.preview import DEFAULT_MAX_TOKENS, DatasetPreview, chat_tokenizer, template_lengths
from core.datasets.splitting import DEFAULT_VALIDATION_FRACTION, assign_splits, check_fraction, split_group
from core.db import Database
from core.formatting import plural

Kind = Literal["chat", "text"]
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    kind: Kind
    source: str
    collection: str | None  # the collection it was generated from, while that exists
    created_at: datetime
    train_count: int = 0
    validation_count: int = 0

    @property
    def example_count(self) -> int:
        return self.train_count + self.validation_count


@dataclass(frozen=True)
class ExampleInfo:
    id: int
    ordinal: int
    split: str
    messages: list[dict] | None  # chat examples
    text: str | None  # text examples
    document_id: int | None
    chunk_id: int | None
    source_row: int | None  # the file line it was imported from
    filename: str | None  # the document it was generated from


@dataclass(frozen=True)
class NewExample:
    """One example to write: chat `messages` or plain `text`, and where it came from."""

    messages: list[dict] | None = None
    text: str | None = None
    document_id: int | None = None
    chunk_id: int | None = None
    source_row: int | None = None


# --- writing ----------------------------------------------------------------------------------


def validate_dataset_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise DatasetError("A dataset needs a name.")
    if len(name) > 100:
        raise DatasetError(f"Dataset names are at most 100 characters; this one has {len(name)}.")
    if re.search(r"[\x00-\x1f]", name):
        raise DatasetError("A dataset name cannot contain control characters.")
    return name


def _name_taken(name: str) -> DatasetError:
    return DatasetError(f"A dataset named {name!r} already exists; choose another name, or delete that dataset first.")


def ensure_name_free(db: Database, name: str) -> str:
    """Check before slow work (generation) that the name can be used; returns it cleaned."""
    name = validate_dataset_name(name)
    with db.engine.connect() as connection:
        if connection.execute(sql("SELECT 1 FROM datasets WHERE name = :n"), {"n": name}).first():
            raise _name_taken(name)
    return name


def save_dataset(db: Database, name: str, preview: DatasetPreview, *, skip_bad_rows: bool = False,
                 validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0) -> DatasetInfo:
    """Save a previewed file's valid examples as a chat dataset. With bad rows, refuses (listing them)
    unless `skip_bad_rows`."""
    if preview.problems and not skip_bad_rows:
        raise DatasetError(
            f"{preview.filename}: {plural(len(preview.problems), 'row')} cannot be used:\n"
            f"{preview.problem_list()}\nFix them and import again, or choose to skip the bad rows."
        )
    if not preview.examples:
        raise DatasetError(f"{preview.filename} has no valid rows, so there is nothing to save.")
    examples = [NewExample(messages=e.messages, source_row=e.row) for e in preview.examples]
    return write_dataset(db, name, kind="chat", source=preview.source, examples=examples,
                         validation_fraction=validation_fraction, seed=seed)


def write_dataset(db: Database, name: str, *, kind: Kind, source: str, examples: list[NewExample],
                  collection_id: int | None = None, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                  seed: int = 0) -> DatasetInfo:
    """The dataset row and all its examples, split, in one transaction."""
    name = validate_dataset_name(name)
    if not examples:
        raise DatasetError(f"Dataset {name!r} would be empty: there are no valid examples to save.")
    splits = assign_splits([split_group(e.document_id, i) for i, e in enumerate(examples)], validation_fraction, seed)
    try:
        with db.engine.begin() as connection:
            dataset_id = connection.execute(
                sql("INSERT INTO datasets (name, kind, source, collection_id) VALUES (:n, :k, :s, :c) RETURNING id"),
                {"n": name, "k": kind, "s": source, "c": collection_id},
            ).scalar_one()
            _insert_examples(connection, dataset_id, examples, splits)
    except IntegrityError as error:
        if getattr(getattr(error.orig, "diag", None), "constraint_name", None) == "datasets_name_key":
            raise _name_taken(name) from error
        raise
    return get_dataset(db, name)


def _insert_examples(connection: Connection, dataset_id: int, examples: list[NewExample], splits: list[str]) -> None:
    connection.execute(
        sql(
            "INSERT INTO training_examples (dataset_id, ordinal, split, messages, text, document_id, chunk_id, source_row) "
            "VALUES (:d, :o, :s, CAST(:m AS jsonb), :t, :doc, :chunk, :row)"
        ),
        [
            {"d": dataset_id, "o": ordinal, "s": split, "m": json.dumps(e.messages) if e.messages is not None else None,
             "t": e.text, "doc": e.document_id, "chunk": e.chunk_id, "row": e.source_row}
            for ordinal, (e, split) in enumerate(zip(examples, splits, strict=True))
        ],
    )


# --- reading ----------------------------------------------------------------------------------

_DATASETS = """
SELECT d.id, d.name, d.kind, d.source, c.name AS collection, d.created_at,
       count(e.id) FILTER (WHERE e.split = 'train') AS train_count,
       count(e.id) FILTER (WHERE e.split = 'validation') AS validation_count
FROM datasets d
LEFT JOIN collections c ON c.id = d.collection_id
LEFT JOIN training_examples e ON e.dataset_id = d.id
{where}
GROUP BY d.id, c.name
ORDER BY d.name
"""


def list_datasets(db: Database) -> list[DatasetInfo]:
    with db.engine.connect() as connection:
        return [DatasetInfo(**row._mapping) for row in connection.execute(sql(_DATASETS.format(where="")))]


def get_dataset(db: Database, name: str) -> DatasetInfo:
    with db.engine.connect() as connection:
        row = connection.execute(sql(_DATASETS.format(where="WHERE d.name = :n")), {"n": name}).first()
        if row is None:
            known = connection.scalars(sql("SELECT name FROM datasets ORDER BY name")).all()
            hint = f" Existing datasets: {', '.join(known)}." if known else " There are no datasets yet: import or generate one."
            raise DatasetError(f"No dataset named {name!r}.{hint}")
    return DatasetInfo(**row._mapping)


def delete_dataset(db: Database, name: str) -> int:
    """Delete a dataset with its examples; returns how many examples went. Jobs trained on it keep
    their record (their dataset becomes unknown)."""
    dataset = get_dataset(db, name)
    with db.engine.begin() as connection:
        connection.execute(sql("DELETE FROM datasets WHERE id = :d"), {"d": dataset.id})
    return dataset.example_count


def list_examples(db: Database, dataset: str, split: str | None = None, *, limit: int = 50, offset: int = 0) -> list[ExampleInfo]:
    """A page of a dataset's examples in order, with the document each was generated from."""
    if split is not None and split not in SPLITS:
        raise DatasetError(f"The split is 'train' or 'validation', not {split!r}.")
    dataset_id = get_dataset(db, dataset).id
    query = sql(
        "SELECT e.id, e.ordinal, e.split, e.messages, e.text, e.document_id, e.chunk_id, e.source_row, d.filename "
        "FROM training_examples e LEFT JOIN documents d ON d.id = e.document_id "
        "WHERE e.dataset_id = :d AND (CAST(:s AS text) IS NULL OR e.split = :s) ORDER BY e.ordinal LIMIT :l OFFSET :o"
    )
    with db.engine.connect() as connection:
        rows = connection.execute(query, {"d": dataset_id, "s": split, "l": max(0, limit), "o": max(0, offset)})
        return [ExampleInfo(**row._mapping) for row in rows]


def load_training_examples(db: Database, name: str) -> tuple[list, list]:
    """(train, validation) for the training code: chat message lists, or strings for text datasets."""
    dataset_id = get_dataset(db, name).id
    train: list = []
    validation: list = []
    with db.engine.connect() as connection:
        rows = connection.execute(
            sql("SELECT split, messages, text FROM training_examples WHERE dataset_id = :d ORDER BY ordinal"), {"d": dataset_id}
        )
        for split, messages, body in rows:
            (train if split == "train" else validation).append(messages if messages is not None else body)
    return train, validation


# --- editing ----------------------------------------------------------------------------------


def update_example(db: Database, example_id: int, messages: list[dict] | str | None = None, *, text: str | None = None,
                   model_id: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS) -> ExampleInfo:
    """Replace a chat example's messages (checked like an imported row; a string is read as their JSON,
    as an editor holds them) or a text example's text. With `model_id`, the new messages must also
    fit `max_tokens` of that model."""
    with db.engine.connect() as connection:
        chat = connection.execute(sql("SELECT messages IS NOT NULL FROM training_examples WHERE id = :i"), {"i": example_id}).scalar()
    if chat is None:
        raise DatasetError(f"No training example with id {example_id}; it may have been deleted.")
    if chat:
        values = {"m": json.dumps(_checked_messages(example_id, messages, model_id, max_tokens)), "t": None}
    else:
        body = clean_text(text or "")
        if messages is not None or not body:
            raise DatasetError(f"Example {example_id} is plain text: give its new text, which cannot be empty.")
        values = {"m": None, "t": body}
    with db.engine.begin() as connection:
        updated = connection.execute(
            sql("UPDATE training_examples SET messages = CAST(:m AS jsonb), text = :t WHERE id = :i"), {**values, "i": example_id}
        ).rowcount
    if not updated:
        raise DatasetError(f"No training example with id {example_id}; it was deleted meanwhile.")
    return _example(db, example_id)


def _checked_messages(example_id: int, messages, model_id: str | None, max_tokens: int) -> list[dict]:
    if messages is None:
        raise DatasetError(f"Example {example_id} is a chat example: give its new messages.")
    try:
        checked = check_messages(messages)
    except RowInvalid as error:
        raise DatasetError(f"Example {example_id}: {error}.") from error
    if model_id:
        tokenizer, window = chat_tokenizer(model_id)
        (length,) = template_lengths(tokenizer, [checked])
        limit = min(max_tokens, window)
        if isinstance(length, str) or length > limit:
            why = f"the chat template of {model_id} refuses it ({length})" if isinstance(length, str) else (
                f"{length:,} tokens after the chat template, over the maximum of {limit:,}")
            raise DatasetError(f"Example {example_id}: {why}.")
    return checked


def _example(db: Database, example_id: int) -> ExampleInfo:
    with db.engine.connect() as connection:
        row = connection.execute(
            sql("SELECT e.id, e.ordinal, e.split, e.messages, e.text, e.document_id, e.chunk_id, e.source_row, d.filename "
                 "FROM training_examples e LEFT JOIN documents d ON d.id = e.document_id WHERE e.id = :i"),
            {"i": example_id},
        ).one()
    return ExampleInfo(**row._mapping)


def delete_examples(db: Database, ids: list[int]) -> int:
    """Drop examples by id; returns how many existed. The split of the others stays as it was."""
    with db.engine.begin() as connection:
        result = connection.execute(sql("DELETE FROM training_examples WHERE id = ANY(CAST(:ids AS bigint[]))"), {"ids": list(ids)})
    return result.rowcount


# --- splitting --------------------------------------------------------------------------------


def split_dataset(db: Database, name: str, validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0) -> DatasetInfo:
    """Rewrite the train/validation split, by document (imported rows: by row), in one transaction."""
    check_fraction(validation_fraction)
    dataset_id = get_dataset(db, name).id
    with db.engine.begin() as connection:
        connection.execute(sql("SELECT id FROM datasets WHERE id = :d FOR UPDATE"), {"d": dataset_id})
        rows = connection.execute(
            sql("SELECT id, ordinal, document_id FROM training_examples WHERE dataset_id = :d ORDER BY ordinal"), {"d": dataset_id}
        ).all()
        splits = assign_splits([split_group(r.document_id, r.ordinal) for r in rows], validation_fraction, seed)
        held_out = [r.id for r, split in zip(rows, splits, strict=True) if split == "validation"]
        connection.execute(
            sql("UPDATE training_examples SET split = CASE WHEN id = ANY(CAST(:v AS bigint[])) THEN 'validation' ELSE 'train' END "
                 "WHERE dataset_id = :d"),
            {"v": held_out, "d": dataset_id},
        )
    return get_dataset(db, name)
