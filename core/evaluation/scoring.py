"""One answer of an evaluation run, scored and diagnosed without a judge model.

Scores (core.evaluation.metrics): exact match, token F1 and ROUGE-L against the reference answer,
the embedding similarity to it, and for RAG answers the hit@k and reciprocal rank of the source
passage and whether a cited passage is the source; abstention and looping for every answer.

Which retrieved passage is "the source" of a question:
  1. the question's chunk (exam_questions.chunk_id), when the exam links one;
  2. else any retrieved chunk whose text overlaps the question's source passage (at least
     PASSAGE_OVERLAP of the shorter text's tokens in common), within its source document when the
     exam names one: a re-ingested document has new chunk ids, but its passages still match;
  3. else any chunk of its source document (a question linked to a document only);
  4. else there is no source (and never for an out-of-scope question): hit@k, MRR and
     cited-source are None, "not applicable", and never averaged in as 0.

Out-of-scope questions follow SQuAD 2.0: their right answer is to abstain, so exact match, token
F1, ROUGE-L and similarity are 1.0 when the answer abstains and 0.0 when it answers anything.

The diagnosis names what went wrong, one word per answer (see `diagnose`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from core.evaluation.metrics import (
    abstention_score,
    cited_source,
    exact_match,
    is_abstention,
    looped,
    normalize_answer,
    reciprocal_rank,
    retrieval_hit_at_k,
    rouge_l,
    token_f1,
)

# An in-scope answer is correct when its token F1 reaches this (or it matches exactly). 0.5 is the
# usual "half the reference's words, without much else" line: "every 2,000 hours" for "Every 2,000
# operating hours." passes (F1 0.86), a sentence that only repeats the question's words does not.
CORRECT_F1 = 0.5
# A RAG answer is supported when it cites a passage and at least this share of its (normalised)
# tokens occur in the passages it cites: the words of the answer come from where it says they do.
SUPPORT_OVERLAP = 0.5
# A retrieved chunk is the source passage when this share of the shorter text's tokens is shared.
PASSAGE_OVERLAP = 0.5

CORRECT = "correct"
RETRIEVAL_MISS = "retrieval miss"
READING_MISS = "reading miss"
UNSUPPORTED = "unsupported"
ABSTAINED = "abstained"
WRONG = "wrong"
DIAGNOSES = (CORRECT, RETRIEVAL_MISS, READING_MISS, UNSUPPORTED, ABSTAINED, WRONG)

# The per-answer scores, in the order tables show them. Latency, time to first token and tokens
# are measurements of the run rather than of the answer's quality; they are kept in their own columns.
QUALITY_METRICS = ("exact_match", "token_f1", "rouge_l", "similarity", "hit_at_k", "mrr", "cited_source",
                   "abstention", "looped")
RETRIEVAL_METRICS = ("hit_at_k", "mrr", "cited_source")

_CITATION = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")
_SOURCE = "source"  # the marker ranked lists carry for a source passage (there may be several)


@dataclass(frozen=True)
class ExamItem:
    """What scoring needs of one exam question."""

    question_id: int
    question: str
    reference: str
    out_of_scope: bool = False
    chunk_id: int | None = None
    document_id: int | None = None
    source_document: str | None = None  # the document's file name, as the exam gives it
    source_passage: str | None = None


@dataclass(frozen=True)
class Passage:
    """One retrieved passage, best first (rank 1), as the run stores it."""

    rank: int
    chunk_id: int
    document_id: int
    filename: str
    text: str
    number: int | None = None  # its [n] in the prompt; None when it was not given to the model


@dataclass(frozen=True)
class ScoredAnswer:
    scores: dict[str, float | None]
    diagnosis: str
    source_ranks: list[int] = field(default_factory=list)  # ranks of the retrieved passages that are the source
    cited_chunks: list[int] = field(default_factory=list)


def _bag(text: str) -> Counter:
    return Counter(normalize_answer(text).split())


def passage_overlap(chunk_text: str, passage: str) -> float:
    """Share of the shorter text's tokens (counted with repeats) that the other text holds too."""
    chunk, wanted = _bag(chunk_text), _bag(passage)
    shorter = min(sum(chunk.values()), sum(wanted.values()))
    return sum((chunk & wanted).values()) / shorter if shorter else 0.0


def has_source(item: ExamItem) -> bool:
    """Whether the question names anything retrieval can find (never for an out-of-scope question)."""
    return not item.out_of_scope and bool(item.chunk_id or item.source_passage or item.document_id or item.source_document)


def is_source(item: ExamItem, passage: Passage) -> bool:
    """Whether `passage` is the question's source passage (rules 1-3 of the module notes)."""
    if not has_source(item):
        return False
    if item.chunk_id is not None:
        return passage.chunk_id == item.chunk_id
    if item.document_id is not None:
        same_document: bool | None = passage.document_id == item.document_id
    elif item.source_document:
        same_document = passage.filename == item.source_document
    else:
        same_document = None
    if item.source_passage:
        return same_document is not False and passage_overlap(passage.text, item.source_passage) >= PASSAGE_OVERLAP
    return bool(same_document)


def without_citations(answer: str) -> str:
    """The answer without its [n] markers: they say where a fact comes from, they are not words of the
    answer, so they must not lower a RAG answer's word-overlap scores against a reference that has none."""
    return " ".join(_CITATION.sub(" ", answer).split())


def is_correct(exact: float, f1: float) -> bool:
    """An in-scope answer is correct on an exact match or a token F1 of at least CORRECT_F1."""
    return exact == 1.0 or f1 >= CORRECT_F1


def answer_supported(answer: str, cited_texts: list[str]) -> bool:
    """Cites at least one passage, and SUPPORT_OVERLAP of its tokens occur in the cited passages."""
    if not cited_texts:
        return False
    words = normalize_answer(without_citations(answer)).split()
    if not words:
        return False
    cited = set(normalize_answer(" ".join(cited_texts)).split())
    return sum(word in cited for word in words) / len(words) >= SUPPORT_OVERLAP


def diagnose(*, out_of_scope: bool, correct: bool, abstained: bool, rag: bool, source_known: bool = False,
             source_in_top_k: bool = False, supported: bool = False) -> str:
    """One word for what happened to an answer; the first rule that applies wins.

    Out of scope: "correct" when it abstained, else "wrong" (it invented an answer).
    In scope, without RAG: "correct"; "abstained"; else "wrong".
    In scope, with RAG:
      - "correct": right and supported by the passages it cites;
      - "retrieval miss": wrong (or abstained) and the source was not in the top k: the reader never saw it;
      - "abstained": said it does not know although the source was retrieved (or none is known);
      - "unsupported": right words, but not backed by a cited passage (cites nothing, or its words
        are not in what it cites): right by luck or from memory, not traceable;
      - "reading miss": the source was retrieved and the answer is still wrong;
      - "wrong": wrong, and the exam names no source to tell retrieval from reading.
    """
    if out_of_scope:
        return CORRECT if abstained else WRONG
    if not rag:
        return CORRECT if correct else ABSTAINED if abstained else WRONG
    if correct:
        return CORRECT if supported else UNSUPPORTED
    if source_known and not source_in_top_k:
        return RETRIEVAL_MISS
    if abstained:
        return ABSTAINED
    return READING_MISS if source_known else WRONG


def score_answer(item: ExamItem, answer: str, *, rag: bool, retrieved: list[Passage] | None = None,
                 cited_numbers: list[int] | None = None, top_k: int = 5, similarity: float | None = None,
                 stopped_by: str | None = None) -> ScoredAnswer:
    """Scores and diagnosis of one answer. `retrieved`: everything retrieval returned, best first;
    `cited_numbers`: the [n] the answer cites; `similarity`: cosine similarity of the embeddings of
    the answer (without citations) and the reference (computed by the caller, batched). Word-overlap
    scores also leave the citation markers out."""
    retrieved = retrieved or []
    abstained = is_abstention(answer)
    if item.out_of_scope:  # SQuAD 2.0: abstaining is the right answer
        exact = f1 = rouge = float(abstained)
        similarity = float(abstained)
    else:
        content = without_citations(answer)
        exact, f1, rouge = exact_match(content, item.reference), token_f1(content, item.reference), rouge_l(content, item.reference)
    scores: dict[str, float | None] = {
        "exact_match": exact, "token_f1": f1, "rouge_l": rouge, "similarity": similarity,
        "hit_at_k": None, "mrr": None, "cited_source": None,
        "abstained": float(abstained), "abstention": abstention_score(answer, item.out_of_scope),
        "looped": float(stopped_by == "loop" or looped(answer)),
    }
    by_number = {p.number: p for p in retrieved if p.number is not None}
    cited = [by_number[n] for n in (cited_numbers or []) if n in by_number]
    source_ranks = [p.rank for p in retrieved if is_source(item, p)]
    source_known = rag and has_source(item)
    in_top_k = False
    if source_known:
        ranked = [_SOURCE if p.rank in source_ranks else p.chunk_id for p in sorted(retrieved, key=lambda p: p.rank)]
        scores["hit_at_k"] = retrieval_hit_at_k(ranked, _SOURCE, top_k)
        scores["mrr"] = reciprocal_rank(ranked, _SOURCE)
        scores["cited_source"] = cited_source([_SOURCE if p.rank in source_ranks else p.chunk_id for p in cited], _SOURCE)
        in_top_k = scores["hit_at_k"] == 1.0
    diagnosis = diagnose(
        out_of_scope=item.out_of_scope, correct=is_correct(exact, f1), abstained=abstained, rag=rag,
        source_known=source_known, source_in_top_k=in_top_k,
        supported=answer_supported(answer, [p.text for p in cited]),
    )
    return ScoredAnswer(scores, diagnosis, source_ranks, [p.chunk_id for p in cited])
