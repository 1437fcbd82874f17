"""Statistics for comparing variants on an exam: bootstrap intervals, paired differences, Bradley–Terry.

Every random draw comes from a numpy Generator seeded by the caller, so the same data and seed
give the same interval on every run and every machine. A variant is only called better or worse
when the whole interval is on one side of zero; otherwise the honest answer is "no detectable
difference".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"

TIE = "tie"
ALL_WRONG = "all wrong"

Outcome = Literal["a", "b", "tie"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and the number of observations behind it."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """One pairwise result between variants a and b: "a" won, "b" won, or "tie"."""

    a: str
    b: str
    outcome: Outcome

    def __post_init__(self) -> None:
        if self.outcome not in ("a", "b", "tie"):
            raise ValueError(f"outcome must be 'a', 'b' or 'tie', got {self.outcome!r}.")
        if self.a == self.b:
            raise ValueError(f"A variant cannot be compared with itself ({self.a!r}).")


def _check_settings(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}.")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=0)
    return low, high


def _as_scores(values: Iterable[float]) -> np.ndarray:
    scores = np.asarray(list(values), dtype=float)
    if scores.size == 0:
        raise ValueError("No values to average: an interval needs at least one scored question.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("Every value must be a finite number; drop the not-applicable (None) scores first.")
    return scores


def bootstrap_mean(values: Iterable[float], *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """The mean with a percentile-bootstrap interval: how far the mean could move on another draw of questions.

    One value gives a zero-width interval (low = high = mean): there is no spread to resample.
    """
    _check_settings(resamples, confidence)
    scores = _as_scores(values)
    mean = float(scores.mean())
    if scores.size == 1:
        return Interval(mean=mean, low=mean, high=mean, n=1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, scores.size, size=(resamples, scores.size))
    low, high = _percentiles(scores[picks].mean(axis=1), confidence)
    return Interval(mean=mean, low=float(low), high=float(high), n=int(scores.size))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of a[i] − b[i] over the same questions, bootstrapped over questions.

    Pairing removes the question-to-question spread (some questions are hard for every variant),
    so a real difference shows with far fewer questions than comparing two separate means.
    """
    if len(a) != len(b):
        raise ValueError(f"Paired scores need the same questions: got {len(a)} and {len(b)} scores.")
    differences = _as_scores(a) - _as_scores(b)
    return bootstrap_mean(differences, resamples=resamples, confidence=confidence, seed=seed)


def verdict(interval: Interval) -> str:
    """Say "better" when the whole interval is above 0, "worse" when below, else "no detectable difference".

    A single observation has a zero-width interval that proves nothing, so it is never a verdict.
    """
    if interval.n >= 2 and interval.low > 0:
        return BETTER
    if interval.n >= 2 and interval.high < 0:
        return WORSE
    return NO_DIFFERENCE


# Bradley–Terry
#
# Each variant i has a strength p_i; i is preferred over j with probability p_i / (p_i + p_j).
# A tie counts as half a win for each side (the common "ties as half-wins" reading): it pulls the
# two strengths together without a separate tie parameter (Rao–Kupper or Davidson models add one).
# The fit is Hunter's (2004) MM algorithm: p_i <- W_i / sum_j N_ij / (p_i + p_j), where W_i is
# i's wins (ties as halves) and N_ij the games between i and j, each step followed by the exact
# best overall scale (see _fit_strengths); it converges in tens of steps rather than thousands.
#
# Prior: every variant also plays `prior_weight` virtual games, all tied, against a fixed
# reference of strength 1. Without it a variant that won every vote would get an infinite
# strength (and one that lost every vote zero); with it every strength is finite, and variants
# that were never compared with each other still sit on one scale. One virtual tie is worth
# less than one real vote, so a handful of votes already outweighs it. Lower prior_weight to
# trust the votes more (0.01: A beating B 3 times in 4 gives a ratio of about 3).
#
# Strengths are returned scaled so their geometric mean is 1: a strength of 2 means twice the
# odds of being preferred over a typical variant, and p_i / p_j is the odds that i beats j.


def _players(comparisons: Iterable[Comparison], extra: Iterable[str] = ()) -> list[str]:
    names = set(extra)
    for comparison in comparisons:
        names.update((comparison.a, comparison.b))
    return sorted(names)


def _vote_tables(votes: Sequence[Sequence[Comparison]], players: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per vote: each player's wins (ties as halves), and the games between each pair."""
    index = {name: i for i, name in enumerate(players)}
    wins = np.zeros((len(votes), len(players)))
    games = np.zeros((len(votes), len(players), len(players)))
    for v, vote in enumerate(votes):
        for comparison in vote:
            i, j = index[comparison.a], index[comparison.b]
            score_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[comparison.outcome]
            wins[v, i] += score_a
            wins[v, j] += 1.0 - score_a
            games[v, i, j] += 1.0
            games[v, j, i] += 1.0
    return wins, games


def _best_scale(log_strengths: np.ndarray, reference_ties: np.ndarray) -> np.ndarray:
    """The shift c that maximises the likelihood of log_strengths + c, for a batch (..., P) → (..., 1).

    Only the games against the reference depend on the overall scale; the optimum has each player's
    expected score against it summing to the observed half-wins: sum_i r_i (sigmoid(theta_i + c) - 1/2) = 0.
    """
    shift = np.zeros(log_strengths.shape[:-1] + (1,))
    for _ in range(50):
        expected = 1.0 / (1.0 + np.exp(-(log_strengths + shift)))
        slope = (reference_ties * expected * (1 - expected)).sum(axis=-1, keepdims=True)
        excess = (reference_ties * (expected - 0.5)).sum(axis=-1, keepdims=True)
        step = np.clip(excess / slope, -1.0, 1.0)
        shift = shift - step
        if np.max(np.abs(step), initial=0.0) < 1e-12:
            break
    return shift


def _fit_strengths(
    wins: np.ndarray,
    games: np.ndarray,
    reference_ties: np.ndarray,
    iterations: int,
    tolerance: float,
) -> np.ndarray:
    """MM fit for a batch of tables → strengths (..., P) with geometric mean 1.

    wins (..., P): wins with ties as halves; games (..., P, P): games between each pair;
    reference_ties (..., P): the prior's tied virtual games of each player against the reference.
    Each MM step is followed by the exact best overall scale: the MM step alone moves the scale
    very slowly when the real games far outnumber the prior's, and the scale only matters through the prior.
    """
    log_strengths = np.zeros_like(wins)
    numerator = wins + reference_ties / 2
    for _ in range(iterations):
        strengths = np.exp(log_strengths)
        pair_sums = strengths[..., :, None] + strengths[..., None, :]
        denominator = (games / pair_sums).sum(axis=-1) + reference_ties / (strengths + 1.0)
        updated = np.log(numerator / denominator)
        updated = updated + _best_scale(updated, reference_ties)
        change = np.max(np.abs(updated - log_strengths), initial=0.0)
        log_strengths = updated
        if change < tolerance:
            break
    return np.exp(log_strengths - log_strengths.mean(axis=-1, keepdims=True))


def _as_votes(items: Iterable[Comparison | Sequence[Comparison]]) -> list[list[Comparison]]:
    return [[item] if isinstance(item, Comparison) else list(item) for item in items]


def _check_prior(prior_weight: float) -> None:
    if not prior_weight > 0:
        raise ValueError(f"prior_weight must be positive (it keeps every strength finite), got {prior_weight}.")


def bradley_terry(
    comparisons: Iterable[Comparison | Sequence[Comparison]],
    *,
    players: Iterable[str] = (),
    prior_weight: float = 1.0,
    iterations: int = 1000,
    tolerance: float = 1e-10,
) -> dict[str, float]:
    """Bradley–Terry strength of each variant from pairwise results, geometric mean 1 (see the notes above).

    Items are Comparisons or whole votes (lists from votes_to_comparisons). `players` adds variants
    that have no comparisons yet; they get strength from the prior alone.
    """
    _check_prior(prior_weight)
    comparisons = [comparison for vote in _as_votes(comparisons) for comparison in vote]
    names = _players(comparisons, players)
    if not names:
        return {}
    wins, games = _vote_tables([comparisons], names)
    strengths = _fit_strengths(wins[0], games[0], np.full(len(names), prior_weight), iterations, tolerance)
    return {name: float(strength) for name, strength in zip(names, strengths, strict=True)}


def _bootstrap_strengths(
    wins: np.ndarray, games: np.ndarray, prior_weight: float, resamples: int, seed: int, iterations: int, tolerance: float
) -> np.ndarray:
    """Strengths fitted on `resamples` draws of the votes with replacement → (resamples, P).

    Half of the prior stays fixed (so every strength is finite); the other half joins the votes as
    one virtual vote per player and is resampled with them. Without that, a few identical votes
    would resample to the same votes every time, a zero-width interval, and "the order is decided"
    after two votes.
    """
    players = wins.shape[1]
    pool_wins = np.concatenate([wins, np.zeros((players, players))])
    pool_games = np.concatenate([games, np.zeros((players, players, players))])
    pool_reference = np.concatenate([np.zeros_like(wins), np.eye(players) * prior_weight / 2])
    pool_size = len(pool_wins)
    rng = np.random.default_rng(seed)
    # How often each vote is drawn in each resample (pool_size draws with replacement).
    counts = rng.multinomial(pool_size, np.full(pool_size, 1 / pool_size), size=resamples).astype(float)
    reference_ties = prior_weight / 2 + counts @ pool_reference
    return _fit_strengths(counts @ pool_wins, np.tensordot(counts, pool_games, axes=1), reference_ties, iterations, tolerance)


def bradley_terry_intervals(
    comparisons: Iterable[Comparison | Sequence[Comparison]],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    prior_weight: float = 1.0,
    iterations: int = 1000,
    tolerance: float = 1e-8,
) -> dict[str, Interval]:
    """Each variant's strength with a bootstrap interval over votes.

    Each item is one vote: a single Comparison, or the list votes_to_comparisons made from one blind
    vote. Votes are resampled whole, because the comparisons of one vote are not independent.
    Interval.mean is the strength fitted on all votes; n is the number of votes the variant was in.
    """
    _check_settings(resamples, confidence)
    _check_prior(prior_weight)
    votes = _as_votes(comparisons)
    names = _players(comparison for vote in votes for comparison in vote)
    if not names:
        return {}
    wins, games = _vote_tables(votes, names)
    point = _fit_strengths(wins.sum(axis=0), games.sum(axis=0), np.full(len(names), prior_weight), iterations, tolerance)
    sampled = _bootstrap_strengths(wins, games, prior_weight, resamples, seed, iterations, tolerance)
    low, high = _percentiles(sampled, confidence)
    appearances = (games.sum(axis=-1) > 0).sum(axis=0)
    return {
        name: Interval(mean=float(point[i]), low=float(low[i]), high=float(high[i]), n=int(appearances[i]))
        for i, name in enumerate(names)
    }


def ranking_decided(intervals: Mapping[str, Interval], *, min_votes: int = 5) -> bool:
    """False while the order is not yet decided: two neighbours in the ranking have overlapping intervals,
    or some variant has fewer than min_votes votes.

    The vote minimum is there because a bootstrap cannot show uncertainty that a few votes do not
    contain: three identical votes resample to three identical votes. With fewer than two variants
    there is no order to decide, so True.
    """
    if len(intervals) < 2:
        return True
    if any(interval.n < min_votes for interval in intervals.values()):
        return False
    ranked = sorted(intervals.values(), key=lambda interval: interval.mean, reverse=True)
    return all(upper.low > lower.high for upper, lower in zip(ranked, ranked[1:], strict=False))


def votes_to_comparisons(variants: Sequence[str], choice: str) -> list[Comparison]:
    """The pairwise results one blind vote stands for.

    A variant's name: it beats each other variant. "tie": every pair ties. "all wrong": every pair
    ties as well — the vote still counts, as evidence that none of the variants is better than the others.
    """
    if len(set(variants)) != len(variants):
        raise ValueError(f"Variant names must be distinct, got {list(variants)}.")
    if choice in variants:
        return [Comparison(choice, other, "a") for other in variants if other != choice]
    if choice in (TIE, ALL_WRONG):
        return [Comparison(first, second, "tie") for k, first in enumerate(variants) for second in variants[k + 1 :]]
    raise ValueError(f"The vote must name one of {list(variants)}, {TIE!r} or {ALL_WRONG!r}; got {choice!r}.")
