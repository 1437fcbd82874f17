"""One question, up to four answers: the base model, base + RAG, fine-tuned, fine-tuned + RAG.

All four come from one loaded base model: the fine-tuned variants switch its LoRA adapter on for
their generation and the others run with it off, so memory holds one copy of the weights (a served
model, `openai:<name>`, asks its server for the adapter by its served name instead). Every
check that can fail (the question, the collection, the adapter and its base model) runs before any
answer is generated, and retrieval for the RAG variants happens here too; generation starts when
an answer is streamed. Stream them one after another: generation holds the model's lock, so two
answers never run at once anyway.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.answers.rag import Answer, AnswerTimings, QuestionError, Source, ask
from core.config import Settings, get_settings
from core.db import Database
from core.evaluation.variants import LABELS, USES_ADAPTER, USES_RAG, VARIANTS
from core.models import NO_ADAPTER, load_model
from core.models.adapters import find_adapter
from core.models.loading import use_adapter
from core.models.served import is_served, served_model


class CompareError(QuestionError):
    """A comparison that cannot run as asked; the message says what to change."""


@dataclass
class VariantAnswer:
    """One variant's answer: stream it (`stream()`), then read its text, timings and sources."""

    variant: str
    answer: Answer

    @property
    def label(self) -> str:
        return LABELS[self.variant]

    def stream(self) -> Iterator[str]:
        return self.answer.stream()

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def timings(self) -> AnswerTimings:
        return self.answer.timings

    @property
    def sources(self) -> list[Source]:
        return self.answer.sources

    def to_dict(self) -> dict:
        return {"variant": self.variant, **self.answer.to_dict()}


def check_variants(variants: Sequence[str]) -> list[str]:
    """The variants as a list in the order given, or a CompareError naming the bad one."""
    variants = [v.strip() for v in variants]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CompareError(f"Unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}.")
    if not variants:
        raise CompareError(f"Choose at least one variant to compare: {', '.join(VARIANTS)}.")
    if len(set(variants)) != len(variants):
        raise CompareError(f"Each variant once, please: got {', '.join(variants)}.")
    return variants


def generation_settings(settings: Settings, max_new_tokens: int | None = None) -> dict:
    """What decides the answers besides the model and adapter: stored with each vote."""
    return {
        "max_new_tokens": max_new_tokens or settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "rag_top_k": settings.rag_top_k,
        "rag_min_similarity": settings.rag_min_similarity,
        "rag_prompt": settings.rag_prompt,
    }


def compare(
    db: Database,
    question: str,
    *,
    collection: str | None,
    adapter: str | None = None,
    model_id: str | None = None,
    variants: Sequence[str] = VARIANTS,
    max_new_tokens: int | None = None,
    settings: Settings | None = None,
) -> list[VariantAnswer]:
    """Prepare one answer per variant, in the order given; stream them one after another.

    "ft" and "rag+ft" need `adapter`, trained on the same base model; "rag" and "rag+ft" need a
    collection with documents. Bad input raises a UserError before any answer is generated.
    """
    settings = settings or get_settings()
    variants = check_variants(variants)
    if not (question or "").strip():
        raise CompareError("Type a question first.")
    adapter = None if adapter in (None, "", NO_ADAPTER) else adapter
    fine_tuned = [v for v in variants if USES_ADAPTER[v]]
    if fine_tuned and adapter is None:
        raise CompareError(
            f"The {' and '.join(repr(v) for v in fine_tuned)} variant{'s need' if len(fine_tuned) > 1 else ' needs'} "
            "a fine-tuned adapter: pick one (fine-tune one on the Fine-tune page), or leave those variants out."
        )
    if any(USES_RAG[v] for v in variants) and not collection:
        raise CompareError("The RAG variants need a collection to answer from: choose one, or leave them out.")
    served = is_served(model_id or settings.language_model)  # its adapters live on its server, by name
    loaded = served_model(model_id, settings) if served else load_model(model_id, settings=settings)
    if fine_tuned and not served:
        info = find_adapter(db, adapter, settings)  # "no adapter named ..." with the names that exist
        with loaded.lock:  # attach it now: an adapter for another base model is refused before any answer
            use_adapter(loaded, adapter, info.path)
    return [
        VariantAnswer(variant, ask(
            db, question, collection=collection if USES_RAG[variant] else None, use_rag=USES_RAG[variant],
            adapter=adapter if USES_ADAPTER[variant] else None, model_id=loaded.model_id,
            max_new_tokens=max_new_tokens, temperature=settings.temperature, top_p=settings.top_p, settings=settings,
        ))
        for variant in variants
    ]


def blind_order(variants: Sequence[str], seed: int | None = None) -> dict[str, str]:
    """Labels A, B, C, ... for the variants in a random order: {"A": "rag", "B": "base", ...}.

    The same seed gives the same order; keep the seed (or the result) to show the same order again.
    """
    variants = list(variants)
    if len(variants) > len(string.ascii_uppercase):
        raise CompareError(f"At most {len(string.ascii_uppercase)} variants can be labelled.")
    shuffled = random.Random(seed).sample(variants, k=len(variants))
    return dict(zip(string.ascii_uppercase, shuffled, strict=False))
