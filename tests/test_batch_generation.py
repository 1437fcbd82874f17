"""Batched greedy generation (left padding; on a CPU each prompt prefilled alone, the batch decoded
together) and the loop guard that judges only generated tokens."""

from __future__ import annotations

import pytest

from core.models import load_model
from core.models.batch import generate_batch
from core.models.repetition import loop_start


def test_a_phrase_repeated_three_times_is_a_loop_and_only_its_first_copy_stays():
    phrase = [5, 6, 7, 8, 9, 10]
    ids = [1, 2, 3] + phrase * 4
    assert loop_start(ids) == 3 + len(phrase)


def test_one_token_repeated_sixteen_times_is_a_loop_but_fifteen_is_not():
    assert loop_start([1, 2] + [0] * 16) == 3
    assert loop_start([1, 2] + [0] * 15) is None


def test_ordinary_text_and_a_short_double_are_not_loops():
    assert loop_start(list(range(100))) is None
    assert loop_start([1, 2, 3, 4, 1, 2, 3, 4]) is None  # twice is not a loop
    assert loop_start([]) is None


def test_the_prompt_is_not_judged(tiny_llama):
    """A prompt full of repeats (a passage that repeats itself) does not stop the answer at once."""
    loaded = load_model(tiny_llama)
    repeated = "pump valve seal " * 40
    answer = generate_batch(loaded, [[{"role": "user", "content": repeated}]], max_new_tokens=6, stop_loops=True)[0]
    assert answer.new_tokens > 0


@pytest.fixture(scope="module")
def questions():
    return [[{"role": "user", "content": text}] for text in (
        "What opens at 3.5 bar?", "Hi", "How often is the mechanical seal of the feed pump replaced, and by whom?",
        "Which valve should never throttle?", "What moves water in a centrifugal pump?")]


def test_batched_answers_equal_one_by_one_answers_and_reruns_are_identical(tiny_llama, questions):
    loaded = load_model(tiny_llama)
    batched = generate_batch(loaded, questions, max_new_tokens=12, batch_size=5, prefill_one_by_one=False)
    single = [generate_batch(loaded, [q], max_new_tokens=12, batch_size=1)[0] for q in questions]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [a.new_tokens for a in batched] == [a.new_tokens for a in single]
    again = generate_batch(loaded, questions, max_new_tokens=12, batch_size=2)
    assert [a.text for a in again] == [a.text for a in batched]
    assert all(a.prompt_tokens > 0 and a.seconds >= a.time_to_first_token > 0 for a in batched)
    assert {a.stopped_by for a in batched} <= {"end of turn", "loop", "max new tokens"}


@pytest.mark.parametrize("architecture", ["tiny_llama", "tiny_phi3", "tiny_phi4mini"])
def test_continuous_batching_answers_as_each_prompt_alone(architecture, questions, request):
    """The CPU path (core/models/continuous.py): each prompt prefilled alone, joining a running batch whose
    finished sequences leave at once. With fewer slots than prompts, sequences join and leave mid-way; prompts
    of different lengths keep their own positions. Every answer equals `generate` on that prompt alone, and
    `generate` on a padded batch."""
    loaded = load_model(request.getfixturevalue(architecture))
    long_question = [{"role": "user", "content": "Passage: " + "the seal is replaced by the fitter every year. " * 12
                      + "Question: how often is the seal replaced?"}]
    conversations = [*questions, long_question]
    alone = [generate_batch(loaded, [c], max_new_tokens=10, prefill_one_by_one=False)[0] for c in conversations]
    padded = generate_batch(loaded, conversations, max_new_tokens=10, batch_size=6, prefill_one_by_one=False)
    assert [a.text for a in padded] == [a.text for a in alone]
    for slots in (1, 2, 6):
        continuous = generate_batch(loaded, conversations, max_new_tokens=10, batch_size=slots, prefill_one_by_one=True)
        assert [a.text for a in continuous] == [a.text for a in alone], slots
        assert [(a.new_tokens, a.stopped_by) for a in continuous] == [(a.new_tokens, a.stopped_by) for a in alone], slots
    assert all(a.new_tokens > 0 for a in alone)


def test_continuous_batching_stops_each_sequence_on_its_own(tiny_llama, questions):
    """Different answer lengths in one running batch: a sequence that reaches its end of turn, a loop or the
    token limit leaves, and the others go on (the same stops as alone, with the loop guard on)."""
    loaded = load_model(tiny_llama)
    alone = [generate_batch(loaded, [q], max_new_tokens=40, prefill_one_by_one=False, stop_loops=True)[0] for q in questions]
    together = generate_batch(loaded, questions, max_new_tokens=40, batch_size=3, prefill_one_by_one=True, stop_loops=True)
    assert [(a.text, a.stopped_by) for a in together] == [(a.text, a.stopped_by) for a in alone]
    assert all(a.seconds >= a.time_to_first_token > 0 for a in together)
