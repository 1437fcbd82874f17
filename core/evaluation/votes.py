"""Blind votes on compared answers, and the ranking they add up to.

A vote is stored with everything that produced it (question, collection, model, adapter, settings,
each variant's answer and the order they were shown in), so it can be read again later and a
ranking can be limited to one model. The ranking is Bradley–Terry with ties (see
core.evaluation.stats): a pick beats each other shown variant, "tie" and "all wrong" tie them all,
and the votes are resampled whole for the 95% intervals. Until every variant has a few votes and
neighbours' intervals stop overlapping, the order is reported as not yet decided.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from core.db import Database
from core.errors import UserError
from core.evaluation.stats import ALL_WRONG, TIE, bradley_terry_intervals, ranking_decided, votes_to_comparisons
from core.evaluation.variants import LABELS, VARIANTS

CHOICES_BESIDES_VARIANTS = (TIE, ALL_WRONG)
MAX_NOTE_CHARS = 2000


class VoteError(UserError):
    """A vote that cannot be stored as given; the message says why."""


@dataclass(frozen=True)
class Vote:
    id: int
    question: str
    collection: str | None
    model: str
    adapter: str | None
    settings: dict
    answers: dict[str, str]
    shown_order: list[str]
    choice: str
    note: str | None
    created_at: datetime

    def as_dict(self) -> dict:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["created_at"] = self.created_at.isoformat()
        return values


@dataclass(frozen=True)
class RankedVariant:
    variant: str
    strength: float  # Bradley–Terry strength, geometric mean 1 over the ranked variants
    low: float  # bootstrap 95% interval of the strength
    high: float
    votes: int  # votes the variant was shown in

    @property
    def label(self) -> str:
        return LABELS.get(self.variant, self.variant)


@dataclass(frozen=True)
class Ranking:
    variants: list[RankedVariant]  # strongest first
    decided: bool  # False: the order is not yet decided (too few votes, or overlapping intervals)
    votes: int
    model: str | None = None

    @property
    def message(self) -> str:
        if not self.votes:
            return "No votes yet: compare answers in blind mode and pick the best to start a ranking."
        if not self.decided:
            return (f"The order is not yet decided: {self.votes} vote{'s' if self.votes != 1 else ''} so far, and "
                    "neighbouring variants' 95% intervals overlap or a variant has fewer than 5 votes.")
        return f"The order is decided: {self.votes} votes, and no two neighbours' 95% intervals overlap."

    def as_dict(self) -> dict:
        return {"model": self.model, "votes": self.votes, "decided": self.decided, "message": self.message,
                "variants": [vars(v) for v in self.variants]}


def check_vote(answers: Mapping[str, str], shown_order: Sequence[str], choice: str) -> None:
    """Raise VoteError unless the answers, their shown order and the choice fit together."""
    unknown = [v for v in answers if v not in VARIANTS]
    if unknown:
        raise VoteError(f"Unknown variant {unknown[0]!r}: votes compare {', '.join(VARIANTS)}.")
    if len(answers) < 2:
        raise VoteError("A vote compares at least two answers.")
    if sorted(shown_order) != sorted(answers):
        raise VoteError(f"The shown order {list(shown_order)} must list each answered variant once: {list(answers)}.")
    if choice not in answers and choice not in CHOICES_BESIDES_VARIANTS:
        options = ", ".join(repr(c) for c in [*shown_order, *CHOICES_BESIDES_VARIANTS])
        raise VoteError(f"The vote must be one of {options}; got {choice!r}.")


def record_vote(
    db: Database,
    *,
    question: str,
    collection: str | None,
    model: str,
    adapter: str | None,
    settings: Mapping,
    answers: Mapping[str, str],
    shown_order: Sequence[str],
    choice: str,
    note: str | None = None,
) -> Vote:
    """Store one blind vote: `choice` is the variant picked as best, "tie" or "all wrong"."""
    question = (question or "").strip()
    if not question:
        raise VoteError("A vote needs the question the answers were given to.")
    check_vote(answers, shown_order, choice)
    note = (note or "").strip() or None
    if note and len(note) > MAX_NOTE_CHARS:
        raise VoteError(f"The note is {len(note):,} characters long; keep it under {MAX_NOTE_CHARS:,}.")
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "INSERT INTO votes (question, collection, model, adapter, settings, answers, shown_order, choice, note) "
                "VALUES (:q, :c, :m, :a, CAST(:s AS jsonb), CAST(:ans AS jsonb), :o, :choice, :note) "
                f"RETURNING {_COLUMNS}"
            ),
            {"q": question, "c": collection, "m": model, "a": adapter, "s": json.dumps(dict(settings)),
             "ans": json.dumps(dict(answers)), "o": list(shown_order), "choice": choice, "note": note},
        ).one()
    return _vote(row)


_COLUMNS = "id, question, collection, model, adapter, settings, answers, shown_order, choice, note, created_at"


def _vote(row) -> Vote:
    values = dict(row._mapping)
    values["shown_order"] = list(values["shown_order"])
    return Vote(**values)


def _filters(model: str | None, adapter: str | None, collection: str | None) -> tuple[str, dict]:
    clauses, params = [], {}
    for column, value in (("model", model), ("adapter", adapter), ("collection", collection)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_votes(db: Database, *, model: str | None = None, adapter: str | None = None, collection: str | None = None,
               limit: int | None = None) -> list[Vote]:
    """Votes, newest first (all of them, or the newest `limit`)."""
    where, params = _filters(model, adapter, collection)
    query = f"SELECT {_COLUMNS} FROM votes{where} ORDER BY created_at DESC, id DESC"
    if limit is not None:
        query += " LIMIT :limit"
        params["limit"] = int(limit)
    with db.engine.connect() as connection:
        return [_vote(row) for row in connection.execute(text(query), params)]


def vote_ranking(db: Database, *, model: str | None = None, adapter: str | None = None,
                 collection: str | None = None, resamples: int = 1000, seed: int = 0) -> Ranking:
    """Bradley–Terry strengths with bootstrap 95% intervals from the votes (of one model, if given)."""
    votes = list_votes(db, model=model, adapter=adapter, collection=collection)
    comparisons = [votes_to_comparisons(vote.shown_order, vote.choice) for vote in reversed(votes)]
    intervals = bradley_terry_intervals(comparisons, resamples=resamples, seed=seed) if comparisons else {}
    ranked = sorted(
        (RankedVariant(name, i.mean, i.low, i.high, i.n) for name, i in intervals.items()),
        key=lambda v: (-v.strength, VARIANTS.index(v.variant) if v.variant in VARIANTS else len(VARIANTS)),
    )
    decided = bool(votes) and ranking_decided(intervals)
    return Ranking(ranked, decided, len(votes), model)
