"""Per-answer metrics that need no judge model: each one is cheap, repeatable and explainable to an expert.

Word-overlap scores (exact match, token F1, ROUGE-L) follow SQuAD's normalisation so a different
article or a trailing full stop does not count as a wrong answer. Retrieval and citation scores
return None when a question has no source passage, so "not applicable" is never averaged in as 0.
Abstention and looping are the two failures a small model shows most: answering what the documents
do not cover, and repeating itself until the token limit.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# Phrases an answer uses to say the documents do not hold the answer. Case-insensitive; straight
# and curly apostrophes are treated alike. The last one is the sentence core.answers.rag writes
# itself when retrieval finds nothing.
ABSTENTION_PATTERNS: tuple[str, ...] = (
    r"\bthe (?:documents?|sources?|passages?|context|texts?|manuals?) (?:do|does|did) ?(?:not|n't) (?:say|mention|contain|state|specify|cover|include|provide|answer)",
    r"\bI (?:do not|don't|did not|didn't) know\b",
    r"\b(?:cannot|can't|can not|could not|couldn't|unable to) (?:be )?f(?:i|ou)nd\b",  # "I could not find", "cannot be found"
    r"\bnot (?:in|found in|covered (?:in|by)|given in|provided in|stated in|available in) the (?:documents?|sources?|passages?|context|texts?|manuals?)\b",
    r"\bnot mentioned\b",
    r"\bno (?:relevant |specific |such )?information\b",
    r"\b(?:not enough|insufficient) information\b",
    r"\bI (?:cannot|can't|can not|am unable to|am not able to) answer\b",
    r"\bI found nothing\b",
)
_ABSTENTION = re.compile("|".join(f"(?:{pattern})" for pattern in ABSTENTION_PATTERNS), re.IGNORECASE)

# A loop is an n-gram of this many whitespace tokens repeated back to back.
LOOP_NGRAM_SIZES = range(4, 13)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    So "The pump." and "pump" compare equal: wording around the answer is not what is being scored.
    """
    lowered = text.lower()
    without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    without_articles = _ARTICLES.sub(" ", without_punctuation)
    return " ".join(without_articles.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are identical, else 0.0: the strictest score, for short factual answers."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over bags of normalised tokens (counts matter): partial credit for a partly right answer.

    Both empty is a match (1.0); only one empty is a miss (0.0).
    """
    predicted, expected = _tokens(prediction), _tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted)
    recall = shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def _longest_common_subsequence(first: Sequence[str], second: Sequence[str]) -> int:
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over normalised tokens: rewards the reference's words in the reference's order.

    Unlike token F1 it notices word order, which matters for procedures ("open, then close").
    Both empty is 1.0, only one empty is 0.0, as for token_f1.
    """
    predicted, expected = _tokens(prediction), _tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = _longest_common_subsequence(predicted, expected)
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


def retrieval_hit_at_k(ranked_ids: Sequence[Hashable], source_id: Hashable | None, k: int) -> float | None:
    """1.0 when the question's source passage is among the first k retrieved, else 0.0.

    None when the question has no source (out of scope): there is nothing to hit.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if source_id is None:
        return None
    return float(source_id in list(ranked_ids)[:k])


def reciprocal_rank(ranked_ids: Sequence[Hashable], source_id: Hashable | None) -> float | None:
    """1/rank of the source passage (0.0 when not retrieved): how near the top the right passage came.

    None when the question has no source.
    """
    if source_id is None:
        return None
    for rank, ranked_id in enumerate(ranked_ids, start=1):
        if ranked_id == source_id:
            return 1.0 / rank
    return 0.0


def cited_source(cited_ids: Iterable[Hashable], source_id: Hashable | None) -> float | None:
    """1.0 when the answer cites the question's source passage: retrieved is not enough, it must be used.

    None when the question has no source.
    """
    if source_id is None:
        return None
    return float(source_id in set(cited_ids))


def is_abstention(answer: str) -> bool:
    """True when the answer says the documents do not hold the answer ("I could not find ...").

    Any phrase of ABSTENTION_PATTERNS anywhere counts, so a hedge followed by a guess counts too.
    """
    return _ABSTENTION.search(answer.replace("\u2019", "'")) is not None


def abstention_score(answer: str, out_of_scope: bool) -> float:
    """1.0 when the model abstained exactly when it should: on out-of-scope questions, and only there.

    Abstaining on an answerable question is as wrong as inventing an answer to an unanswerable one.
    """
    return float(is_abstention(answer) == out_of_scope)


def _loop_tokens(text: str) -> list[str]:
    # Case and punctuation at token ends are ignored, so "is:" and "Is." still read as one loop.
    tokens = (token.strip(string.punctuation).lower() for token in text.split())
    return [token for token in tokens if token]


def _has_repeated_ngram(tokens: Sequence[str], size: int, min_repeats: int) -> bool:
    span = size * min_repeats
    for start in range(len(tokens) - span + 1):
        ngram = tokens[start : start + size]
        if all(tokens[start + size * r : start + size * (r + 1)] == ngram for r in range(1, min_repeats)):
            return True
    return False


def _has_repeated_line(text: str, min_repeats: int) -> bool:
    lines = (" ".join(line.lower().split()) for line in text.splitlines())
    # Blank lines and markup-only lines (fences, rules) repeat in good answers too, so they do not count.
    counts = Counter(line for line in lines if any(ch.isalnum() for ch in line))
    return any(count >= min_repeats for count in counts.values())


def looped(text: str, min_repeats: int = 3) -> bool:
    """True when generated text degenerated into repetition, the small model's usual failure.

    Either an n-gram of 4 to 12 tokens repeats back to back at least min_repeats times
    ("The answer to your question is: The answer to your question is: ..."), or one line
    occurs at least min_repeats times anywhere. Shorter n-grams are left out so that
    "very, very, very" or a repeated word is not a loop.
    """
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be at least 2, got {min_repeats}.")
    tokens = _loop_tokens(text)
    if any(_has_repeated_ngram(tokens, size, min_repeats) for size in LOOP_NGRAM_SIZES):
        return True
    return _has_repeated_line(text, min_repeats)
