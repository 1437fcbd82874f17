"""Helpers for the fine-tuning tests: small training sets written straight into the tables, and
waiting for a job to reach a state."""

from __future__ import annotations

import json
import time

from sqlalchemy import text

FACTS = [
    ("What opens at 3.5 bar?", "The relief valve of boiler B2."),
    ("How often is the mechanical seal replaced?", "Every 2,000 operating hours."),
    ("When are the bearings checked?", "Once a month, for noise."),
    ("What moves water in a centrifugal pump?", "A spinning impeller."),
    ("What happens if the pump runs dry?", "The seal overheats within seconds."),
    ("Which valve should never throttle?", "The gate valve."),
]


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def make_dataset(db, name: str, examples: list[list[dict]] | None = None, validation: int = 1) -> str:
    """A chat training set; the last `validation` examples form the validation split."""
    examples = examples if examples is not None else [chat(q, a) for q, a in FACTS]
    with db.engine.begin() as connection:
        dataset_id = connection.execute(
            text("INSERT INTO datasets (name, kind, source) VALUES (:n, 'chat', 'test') RETURNING id"), {"n": name}
        ).scalar_one()
        for ordinal, messages in enumerate(examples):
            split = "validation" if ordinal >= len(examples) - validation else "train"
            connection.execute(
                text("INSERT INTO training_examples (dataset_id, ordinal, split, messages) "
                     "VALUES (:d, :o, :s, CAST(:m AS jsonb))"),
                {"d": dataset_id, "o": ordinal, "s": split, "m": json.dumps(messages)},
            )
    return name


def wait_for(predicate, timeout: float = 120, every: float = 0.3, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
