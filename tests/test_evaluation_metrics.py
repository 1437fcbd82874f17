"""Judge-free metrics and statistics against hand-computed examples (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
from core.evaluation.stats import (
    ALL_WRONG,
    BETTER,
    NO_DIFFERENCE,
    TIE,
    WORSE,
    Comparison,
    Interval,
    bootstrap_mean,
    bradley_terry,
    bradley_terry_intervals,
    paired_difference,
    ranking_decided,
    verdict,
    votes_to_comparisons,
)

SMOLLM2_LOOP = (
    "The answer to your question is: The answer to your question is: The answer to your question is: "
    "The answer to your question is: The answer to your question is:"
)
NORMAL_PARAGRAPH = (
    "A centrifugal pump moves water with a spinning impeller. The pump needs a mechanical seal, "
    "and the seal wears over time. Check the pump seal every month; replace the seal when the pump "
    "leaks or the pump bearings run hot. Most pump failures start at the seal."
)


# Word overlap


def test_normalize_answer_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Pump's seal, an O-ring!  ") == "pumps seal oring"


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("The Pump!", "pump") == 1.0
    assert exact_match("an impeller.", "Impeller") == 1.0
    assert exact_match("pumps", "pump") == 0.0


def test_token_f1_hand_computed():
    # "the cat sat on the mat" → cat sat on mat (4 tokens); "a cat sat" → cat sat (2 tokens)
    # shared 2: precision 2/4, recall 2/2, F1 = 2·(1/2)·1 / (1/2 + 1) = 2/3
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    # counts matter: "seal seal" vs "seal seal pump" shares 2 → precision 2/2, recall 2/3, F1 = 2·(2/3) / (5/3) = 4/5
    assert token_f1("seal seal", "seal seal pump") == pytest.approx(4 / 5)
    # and are capped: "seal seal seal" vs "seal" shares 1 → precision 1/3, recall 1, F1 = 2·(1/3) / (4/3) = 1/2
    assert token_f1("seal seal seal", "seal") == pytest.approx(1 / 2)
    assert token_f1("impeller", "seal") == 0.0
    assert token_f1("The.", "a") == 1.0  # both normalise to nothing
    assert token_f1("", "seal") == 0.0


def test_rouge_l_hand_computed_and_sensitive_to_order():
    # close valve then open pump / open valve then close pump: LCS "valve then pump" = 3
    # precision 3/5, recall 3/5 → F = 3/5, while token F1 sees the same five words (1.0)
    prediction, reference = "Close the valve, then open the pump.", "Open the valve, then close the pump."
    assert rouge_l(prediction, reference) == pytest.approx(3 / 5)
    assert token_f1(prediction, reference) == pytest.approx(1.0)
    # pump moves water fast / pump moves water: LCS 3, precision 3/4, recall 3/3 → F = 2·(3/4) / (7/4) = 6/7
    assert rouge_l("the pump moves the water fast", "the pump moves water") == pytest.approx(6 / 7)
    assert rouge_l("seal", "impeller") == 0.0
    assert rouge_l("", "") == 1.0


# Retrieval and citations


def test_hit_at_k_and_reciprocal_rank():
    ranked = [7, 3, 9]
    assert retrieval_hit_at_k(ranked, 3, 1) == 0.0
    assert retrieval_hit_at_k(ranked, 3, 2) == 1.0
    assert reciprocal_rank(ranked, 3) == pytest.approx(1 / 2)
    assert reciprocal_rank(ranked, 7) == 1.0
    assert retrieval_hit_at_k(ranked, 5, 3) == 0.0
    assert reciprocal_rank(ranked, 5) == 0.0
    with pytest.raises(ValueError, match="k must be at least 1"):
        retrieval_hit_at_k(ranked, 3, 0)


def test_retrieval_and_citation_are_not_applicable_without_a_source():
    assert retrieval_hit_at_k([1, 2], None, 5) is None
    assert reciprocal_rank([1, 2], None) is None
    assert cited_source([1, 2], None) is None
    assert cited_source(["c1", "c4"], "c4") == 1.0
    assert cited_source(["c1"], "c4") == 0.0


# Abstention


@pytest.mark.parametrize(
    "answer",
    [
        "The documents do not say.",
        "I could not find this in the documents.",
        "I don't know.",
        "I don\u2019t know the torque for this bolt.",
        "The sources don't mention the warranty period.",
        "This is not mentioned in the manual.",
        "There is no information about the flow rate in the passages.",
        "The answer is not in the documents.",
        "I cannot find any reference to a 50 Hz model.",
        "I found nothing about this in the collection 'pumps', so I cannot answer from your documents.",
    ],
)
def test_abstentions_are_recognised(answer):
    assert is_abstention(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The seal must be replaced every 2000 hours [1].",
        "Yes, the documents say the seal lasts 2000 hours.",
        "Find the drain plug under the pump and open it slowly [2].",
        NORMAL_PARAGRAPH,
    ],
)
def test_real_answers_are_not_abstentions(answer):
    assert not is_abstention(answer)


def test_abstention_score_rewards_abstaining_only_when_out_of_scope():
    assert abstention_score("The documents do not say.", out_of_scope=True) == 1.0
    assert abstention_score("The seal lasts 2000 hours.", out_of_scope=True) == 0.0
    assert abstention_score("The seal lasts 2000 hours.", out_of_scope=False) == 1.0
    assert abstention_score("I could not find it.", out_of_scope=False) == 0.0


# Loops


def test_smollm2_loop_is_detected():
    assert looped(SMOLLM2_LOOP)
    # the same loop with varied case and end punctuation is still one loop
    assert looped("the answer to your question is. THE ANSWER TO YOUR QUESTION IS: The answer to your question is")


def test_looped_needs_min_repeats_back_to_back():
    twice = "The answer to your question is: The answer to your question is: the seal."
    assert not looped(twice)
    assert looped(twice, min_repeats=2)
    with pytest.raises(ValueError):
        looped(twice, min_repeats=1)


def test_a_normal_paragraph_that_repeats_words_is_not_a_loop():
    assert not looped(NORMAL_PARAGRAPH)
    assert not looped("The pump, the pump, the pump is running.")  # 2-token repeats are below the 4-token minimum


def test_a_repeated_line_is_a_loop_but_repeated_markup_is_not():
    # three tokens per line, so no 4..12-token n-gram repeats three times; the line rule catches it
    assert looped("Check the seal.\nCheck the seal.\nCheck the seal.")
    assert looped("Check the seal.\nOpen the valve.\nCheck the seal.\nClose it.\nCheck the seal.")
    fenced = "```\nopen valve\n```\n\n```\nclose valve\n```\n\n```\ncheck seal\n```"
    assert not looped(fenced)


# Bootstrap and paired differences


def test_bootstrap_is_repeatable_and_contains_the_mean():
    scores = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    first = bootstrap_mean(scores, seed=3)
    assert first == bootstrap_mean(scores, seed=3)
    assert first != bootstrap_mean(scores, seed=4)
    assert first.mean == pytest.approx(0.7) and first.n == 10
    assert 0.0 <= first.low < first.mean < first.high <= 1.0


def test_bootstrap_hand_computed_two_values():
    # resampling [0, 1] gives means 0, 1/2, 1 with probability 1/4, 1/2, 1/4:
    # both tails hold far more than 2.5%, so the 95% interval is [0, 1]
    interval = bootstrap_mean([0.0, 1.0], resamples=2000, seed=0)
    assert (interval.mean, interval.low, interval.high, interval.n) == (0.5, 0.0, 1.0, 2)


def test_bootstrap_degenerate_and_invalid_input():
    assert bootstrap_mean([0.4]) == Interval(mean=0.4, low=0.4, high=0.4, n=1)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="None"):
        bootstrap_mean([1.0, None])


def test_paired_difference_verdicts():
    rng = np.random.default_rng(7)
    base = rng.random(60)
    improved = base + 0.2 + rng.normal(0, 0.05, 60)
    unrelated = rng.random(60)
    assert verdict(paired_difference(improved, base)) == BETTER
    assert verdict(paired_difference(base, improved)) == WORSE
    noise = paired_difference(base, unrelated)
    assert noise.low < 0 < noise.high
    assert verdict(noise) == NO_DIFFERENCE
    # hand-computed: every question +1 → mean 1, every resample 1, interval [1, 1]
    assert paired_difference([1, 1, 1], [0, 0, 0]) == Interval(mean=1.0, low=1.0, high=1.0, n=3)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1])


def test_verdict_never_names_a_winner_when_zero_is_inside_or_on_the_edge():
    assert verdict(Interval(mean=0.1, low=-0.05, high=0.2, n=30)) == NO_DIFFERENCE
    assert verdict(Interval(mean=0.1, low=0.0, high=0.2, n=30)) == NO_DIFFERENCE
    assert verdict(Interval(mean=0.1, low=0.02, high=0.2, n=30)) == BETTER
    assert verdict(Interval(mean=0.5, low=0.5, high=0.5, n=1)) == NO_DIFFERENCE  # one question proves nothing


# Bradley–Terry


def test_bradley_terry_three_wins_in_four_gives_odds_of_three():
    # no ties: A wins 3 of 4 → maximum likelihood p_A / (p_A + p_B) = 3/4 → p_A / p_B = 3
    votes = [Comparison("A", "B", "a")] * 3 + [Comparison("A", "B", "b")]
    weak_prior = bradley_terry(votes, prior_weight=0.01)
    assert weak_prior["A"] / weak_prior["B"] == pytest.approx(3.0, rel=0.02)
    assert weak_prior["A"] * weak_prior["B"] == pytest.approx(1.0)  # geometric mean 1
    default = bradley_terry(votes)
    assert 1.0 < default["A"] / default["B"] < 3.0  # the prior pulls towards equal


def test_bradley_terry_counts_ties_as_half_wins():
    assert bradley_terry([Comparison("A", "B", "tie")] * 4) == pytest.approx({"A": 1.0, "B": 1.0})
    # one win and two ties: A scores 1 + 1/2 + 1/2 = 2 of 3, B scores 1 → p_A / p_B = 2
    strengths = bradley_terry([Comparison("A", "B", "a")] + [Comparison("B", "A", "tie")] * 2, prior_weight=0.001)
    assert strengths["A"] / strengths["B"] == pytest.approx(2.0, rel=0.01)


def test_bradley_terry_all_wins_stays_finite_and_chains_through_shared_opponents():
    strengths = bradley_terry([Comparison("A", "B", "a")] * 20)
    assert all(math.isfinite(s) and s > 0 for s in strengths.values())
    assert strengths["A"] > strengths["B"]
    # A never met C, but A beat B and B beat C, so A > B > C; by symmetry B and the unseen D sit at 1
    chain = bradley_terry([Comparison("A", "B", "a"), Comparison("C", "B", "b")], players=["D"])
    assert chain["A"] > chain["B"] > chain["C"]
    assert chain["B"] == pytest.approx(1.0) and chain["D"] == pytest.approx(1.0)


def test_bradley_terry_converges_in_a_hundred_steps_with_many_votes():
    # plain MM moves the overall scale by about prior/votes per step and needs thousands of steps here
    variants = ["base", "rag", "fine-tuned", "both"]
    choices = ["both"] * 40 + ["rag"] * 20 + ["fine-tuned"] * 10 + [ALL_WRONG] * 3
    votes = [votes_to_comparisons(variants, choice) for choice in choices]
    assert bradley_terry(votes, iterations=100) == pytest.approx(bradley_terry(votes, iterations=100_000), rel=1e-6)


def test_votes_to_comparisons():
    variants = ["base", "rag", "fine-tuned", "both"]
    assert votes_to_comparisons(variants, "rag") == [
        Comparison("rag", "base", "a"),
        Comparison("rag", "fine-tuned", "a"),
        Comparison("rag", "both", "a"),
    ]
    for choice in (TIE, ALL_WRONG):
        pairs = votes_to_comparisons(variants, choice)
        assert len(pairs) == 6 and all(pair.outcome == "tie" for pair in pairs)  # 4·3/2 pairs
    with pytest.raises(ValueError, match="must name one of"):
        votes_to_comparisons(variants, "gpt")
    with pytest.raises(ValueError):
        Comparison("rag", "base", "draw")


def test_bootstrap_strengths_are_repeatable_and_centred_on_the_fit():
    variants = ["base", "rag", "both"]
    votes = (
        [votes_to_comparisons(variants, "both")] * 6
        + [votes_to_comparisons(variants, "rag")] * 3
        + [votes_to_comparisons(variants, TIE)]
    )
    intervals = bradley_terry_intervals(votes, resamples=300, seed=1)
    assert intervals == bradley_terry_intervals(votes, resamples=300, seed=1)
    fitted = bradley_terry(votes)
    for name, interval in intervals.items():
        assert interval.mean == pytest.approx(fitted[name])
        assert interval.low <= interval.mean <= interval.high
        assert interval.n == 10


def test_ranking_is_undecided_after_two_votes_and_decided_after_many_lopsided_ones():
    two = bradley_terry_intervals([votes_to_comparisons(["base", "rag"], "rag")] * 2)
    assert two["rag"].mean > two["base"].mean
    assert two["rag"].low <= two["base"].high  # the prior is resampled too, so two votes do not give a zero-width interval
    assert not ranking_decided(two)

    variants = ["base", "rag", "both"]
    many = [votes_to_comparisons(variants, "both")] * 50 + [votes_to_comparisons(variants, "rag")] * 10
    intervals = bradley_terry_intervals(many)
    assert intervals["both"].low > intervals["rag"].high and intervals["rag"].low > intervals["base"].high
    assert ranking_decided(intervals)


def test_ranking_needs_enough_votes_and_two_variants():
    separated = {"A": Interval(5.0, 4.0, 6.0, n=3), "B": Interval(0.2, 0.1, 0.3, n=3)}
    assert not ranking_decided(separated)
    assert ranking_decided(separated, min_votes=3)
    assert ranking_decided({"A": Interval(1.0, 0.5, 2.0, n=1)})
