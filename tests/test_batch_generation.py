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
def test_prompts_prefilled_one_by_one_then_decoded_together_answer_as_each_alone(architecture, questions, request):
    """The CPU path: each prompt read into its own cache, the caches stacked with left padding, one
    decode for the batch. Prompts of different lengths keep their own positions, so each answer is the
    one the prompt gets alone, and the one a batched prefill gives."""
    loaded = load_model(request.getfixturevalue(architecture))
    long_question = [{"role": "user", "content": "Passage: " + "the seal is replaced by the fitter every year. " * 12
                      + "Question: how often is the seal replaced?"}]
    conversations = [*questions, long_question]
    stacked = generate_batch(loaded, conversations, max_new_tokens=10, batch_size=6, prefill_one_by_one=True)
    at_once = generate_batch(loaded, conversations, max_new_tokens=10, batch_size=6, prefill_one_by_one=False)
    single = [generate_batch(loaded, [c], max_new_tokens=10, batch_size=1)[0] for c in conversations]
    assert [a.text for a in stacked] == [a.text for a in single] == [a.text for a in at_once]
    assert [a.new_tokens for a in stacked] == [a.new_tokens for a in single]
    assert all(a.new_tokens > 0 for a in stacked)
