"""Side by side, votes, the advisor and the guided path, on the real database with a tiny random model.

Compare: four answers from one loaded model (the adapter switched on and off), with timings and, for
RAG, their sources; bad input refused before any answer. Votes: stored with their answers, ranked
by Bradley–Terry, "not yet decided" until the votes say so. Advisor: each rule of the guide without
runs, and measured runs (inserted into eval_runs / eval_answers) named with their numbers.
"""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pytest
import samples
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from tiny_models import build_tiny_adapter

from core.answers.rag import ask
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.evaluation.advisor import AdvisorAnswers, AdvisorError, advise, rule_advice
from core.evaluation.compare import CompareError, blind_order, compare
from core.evaluation.guide import guided_path_state
from core.evaluation.votes import VoteError, list_votes, record_vote, vote_ranking
from core.models import AdapterError, load_model
from core.models.adapters import import_adapter
from core.models.loading import _loaded

APP = "../streamlit_app.py"
QUESTION = "when does the relief valve of boiler B2 open"
ADAPTER = "tiny-lora"


@pytest.fixture(scope="module")
def plant(db):
    create_collection(db, "plant")
    ingest_bytes(db, "plant", "pumps.md", samples.MARKDOWN)
    ingest_bytes(db, "plant", "memo.txt", samples.TEXT.encode())
    return "plant"


@pytest.fixture(scope="module")
def adapter(db, tiny_llama, tmp_path_factory):
    folder = build_tiny_adapter(tiny_llama, tmp_path_factory.mktemp("lora") / ADAPTER, train_seconds=42.0)
    import_adapter(db, folder, ADAPTER)
    return ADAPTER


# --- compare ----------------------------------------------------------------------------------


def test_four_answers_from_one_loaded_model(db, plant, adapter, tiny_llama):
    loaded = load_model(tiny_llama)
    copies = sum(1 for key in _loaded if key[0] == tiny_llama)
    answers = compare(db, QUESTION, collection=plant, adapter=adapter, model_id=tiny_llama, max_new_tokens=6)
    assert [a.variant for a in answers] == ["base", "rag", "ft", "rag+ft"]
    for answer in answers:  # one after another: each holds the model's lock while it generates
        pieces = list(answer.stream())
        assert pieces and isinstance(answer.text, str)
        t = answer.timings
        assert t.total_seconds > 0 and 1 <= t.new_tokens <= 6 and t.time_to_first_token is not None
    by_variant = {a.variant: a for a in answers}
    assert by_variant["rag"].sources[0].filename == "memo.txt" and by_variant["rag+ft"].sources
    assert by_variant["base"].sources == [] and by_variant["ft"].sources == []
    assert by_variant["ft"].answer.adapter == adapter and by_variant["base"].answer.adapter == "none"

    # One copy of the weights: the same loaded model, the adapter attached to it, no second entry.
    assert load_model(tiny_llama) is loaded and set(loaded.adapters) == {adapter}
    assert sum(1 for key in _loaded if key[0] == tiny_llama) == copies == 1
    # The adapter is really on for "ft" and really off for "base" (greedy: the same answer as a plain ask).
    plain = ask(db, QUESTION, use_rag=False, model_id=tiny_llama, max_new_tokens=6).complete()
    assert by_variant["base"].text == plain.text != by_variant["ft"].text
    assert by_variant["rag+ft"].to_dict()["variant"] == "rag+ft"


def test_fine_tuned_variants_need_a_fitting_adapter(db, plant, tiny_llama, tiny_phi3, tmp_path):
    with pytest.raises(CompareError, match="'ft' and 'rag\\+ft' variants need a fine-tuned adapter"):
        compare(db, QUESTION, collection=plant, model_id=tiny_llama)
    with pytest.raises(CompareError, match="'ft' variant needs a fine-tuned adapter"):
        compare(db, QUESTION, collection=plant, model_id=tiny_llama, variants=("base", "ft"), adapter="none")
    with pytest.raises(AdapterError, match="No adapter named 'ghost'"):
        compare(db, QUESTION, collection=plant, model_id=tiny_llama, variants=("ft",), adapter="ghost")
    import_adapter(db, build_tiny_adapter(tiny_phi3, tmp_path / "phi3-lora"), "phi3-lora")
    with pytest.raises(AdapterError, match="was trained on .*but the loaded model is"):
        compare(db, QUESTION, collection=plant, model_id=tiny_llama, variants=("base", "ft"), adapter="phi3-lora")
    with pytest.raises(CompareError, match="Unknown variant 'rag\\+base'"):
        compare(db, QUESTION, collection=plant, model_id=tiny_llama, variants=("base", "rag+base"))
    with pytest.raises(CompareError, match="need a collection"):
        compare(db, QUESTION, collection=None, model_id=tiny_llama, variants=("base", "rag"))
    with pytest.raises(CompareError, match="Type a question"):
        compare(db, "  ", collection=plant, model_id=tiny_llama, variants=("base", "rag"))


def test_blind_order_labels_every_variant_once_and_repeats_with_its_seed():
    order = blind_order(["base", "rag", "ft", "rag+ft"], seed=7)
    assert list(order) == ["A", "B", "C", "D"] and sorted(order.values()) == ["base", "ft", "rag", "rag+ft"]
    assert blind_order(["base", "rag", "ft", "rag+ft"], seed=7) == order
    orders = {tuple(blind_order(["base", "rag", "ft", "rag+ft"], seed=s).values()) for s in range(20)}
    assert len(orders) > 5  # really shuffled


# --- votes ------------------------------------------------------------------------------------


def vote(db, choice: str, shown: list[str], model: str = "m-votes") -> None:
    record_vote(db, question="q?", collection="plant", model=model, adapter=ADAPTER, settings={"max_new_tokens": 8},
                answers={v: f"answer of {v}" for v in shown}, shown_order=shown, choice=choice)


def test_a_vote_is_stored_with_its_answers_and_few_votes_decide_nothing(db):
    record_vote(db, question="  When does B2 open? ", collection="plant", model="m-few", adapter=ADAPTER,
                settings={"max_new_tokens": 8, "temperature": 0.0}, answers={"base": "no idea", "rag": "3.5 bar [1]"},
                shown_order=["rag", "base"], choice="rag", note="cites the memo")
    vote(db, "tie", ["base", "rag"], model="m-few")
    (newest, first) = list_votes(db, model="m-few")
    assert (first.question, first.choice, first.note, first.shown_order) == ("When does B2 open?", "rag", "cites the memo", ["rag", "base"])
    assert first.answers == {"base": "no idea", "rag": "3.5 bar [1]"} and first.settings["temperature"] == 0.0
    assert newest.choice == "tie" and newest.note is None

    ranking = vote_ranking(db, model="m-few")
    assert ranking.votes == 2 and not ranking.decided
    assert ranking.message.startswith("The order is not yet decided")
    assert [v.variant for v in ranking.variants] == ["rag", "base"] and ranking.variants[0].votes == 2
    assert all(v.low <= v.strength <= v.high for v in ranking.variants)
    assert vote_ranking(db, model="nobody").votes == 0


def test_many_lopsided_votes_decide_the_order(db):
    order = ["rag+ft", "rag", "ft", "base"]  # best first
    for i, better in enumerate(order):
        for worse in order[i + 1:]:  # each pair shown 33 times: the better one picked 30 times
            for repeat in range(33):
                vote(db, better if repeat < 30 else worse, [better, worse] if repeat % 2 else [worse, better], model="m-many")
    vote(db, "all wrong", order, model="m-many")
    ranking = vote_ranking(db, model="m-many")
    assert ranking.votes == 6 * 33 + 1
    assert [v.variant for v in ranking.variants] == order
    assert ranking.decided, ranking
    assert ranking.message.startswith("The order is decided")
    strengths = [v.strength for v in ranking.variants]
    assert strengths == sorted(strengths, reverse=True) and np.isclose(np.prod(strengths), 1.0)


def test_invalid_votes_are_refused_and_nothing_is_saved(db):
    before = len(list_votes(db))
    with pytest.raises(VoteError, match="must be one of 'rag', 'base', 'tie', 'all wrong'; got 'C'"):
        vote(db, "C", ["rag", "base"])
    with pytest.raises(VoteError, match="shown order"):
        record_vote(db, question="q", collection=None, model="m", adapter=None, settings={}, answers={"base": "a", "rag": "b"},
                    shown_order=["base"], choice="base")
    with pytest.raises(VoteError, match="Unknown variant 'gpt'"):
        vote(db, "tie", ["base", "gpt"])
    with pytest.raises(VoteError, match="at least two"):
        vote(db, "base", ["base"])
    with pytest.raises(VoteError, match="needs the question"):
        record_vote(db, question=" ", collection=None, model="m", adapter=None, settings={}, answers={"base": "a", "rag": "b"},
                    shown_order=["base", "rag"], choice="tie")
    assert len(list_votes(db)) == before


# --- the advisor without runs -----------------------------------------------------------------


@pytest.mark.parametrize(("answers", "expected", "because"), [
    (AdvisorAnswers(changes="weekly+", traceable=False, training_examples=">1000"), "rag", "change every week"),
    (AdvisorAnswers(changes="rarely", traceable=True, training_examples=">1000"), "rag", "traceable to a source"),
    (AdvisorAnswers(changes="rarely", traceable=False, training_examples="<100"), "rag", "fewer than 100 good training"),
    (AdvisorAnswers(changes="rarely", traceable=False, training_examples=">1000", combines_facts=True), "rag", "combine many facts"),
    (AdvisorAnswers(changes="rarely", traceable=False, house_style=True, training_examples="100-1000"), "fine-tune",
     "Stable terminology and a house style"),
    (AdvisorAnswers(changes="rarely", traceable=False, house_style=True, training_examples="none"), "rag",
     "needs more good examples"),
    (AdvisorAnswers(changes="monthly", traceable=True, house_style=True, training_examples=">1000"), "rag+fine-tune",
     "house style"),
    (AdvisorAnswers(changes="rarely", traceable=False, training_examples=">1000", automated_both=True), "rag+fine-tune",
     "Automated flows need both"),
])
def test_each_rule_of_the_guide(answers, expected, because):
    recommendation, reasons = rule_advice(answers)
    assert recommendation == expected, reasons
    assert any(because in reason for reason in reasons), reasons


def test_without_runs_the_advisor_says_which_run_to_make_first(db):
    advice = advise(db, AdvisorAnswers(changes="weekly+"))
    assert (advice.recommendation, advice.measured, advice.evidence) == ("rag", False, [])
    assert "--variants base,rag" in advice.next_step and "python -m core eval --exam" in advice.next_step
    unanswered = advise(db)
    assert unanswered.recommendation == "run an evaluation first"
    assert unanswered.next_step == advice.next_step
    with pytest.raises(AdvisorError, match="How often do the documents change"):
        AdvisorAnswers(changes="daily")
    with pytest.raises(AdvisorError, match="No scored answers on an exam named 'ghost'"):
        advise(db, exam="ghost")


# --- the advisor with runs --------------------------------------------------------------------


def insert_exam(db, collection: str | None, questions: int = 30, name: str | None = None) -> tuple[int, list[int]]:
    name = name or f"exam-{uuid.uuid4().hex[:6]}"
    with db.engine.begin() as connection:
        exam_id = connection.execute(
            text("INSERT INTO exams (name, collection_id, source) "
                 "VALUES (:n, (SELECT id FROM collections WHERE name = :c), 'import') RETURNING id"),
            {"n": name, "c": collection},
        ).scalar_one()
        ids = [connection.execute(
            text("INSERT INTO exam_questions (exam_id, ordinal, question, reference_answer) VALUES (:e, :o, :q, 'r') RETURNING id"),
            {"e": exam_id, "o": i, "q": f"question {i}"},
        ).scalar_one() for i in range(questions)]
    return exam_id, ids


def insert_run(db, exam_id: int, questions: list[int], scores: dict[str, list[float]], latency: dict[str, float],
               adapter: str | None = None, finished: bool = True, settings: str = "{}",
               similarity: dict[str, list[float]] | None = None, looped: dict[str, list[float]] | None = None) -> int:
    with db.engine.begin() as connection:
        run_id = connection.execute(
            text("INSERT INTO eval_runs (exam_id, model, adapter, variants, settings, finished_at) "
                 "VALUES (:e, 'tiny', :a, :v, CAST(:s AS jsonb), CASE WHEN :f THEN now() END) RETURNING id"),
            {"e": exam_id, "a": adapter, "v": list(scores), "f": finished, "s": settings},
        ).scalar_one()
        for variant, values in scores.items():
            for number, (question_id, value) in enumerate(zip(questions, values, strict=True)):
                stored = {"token_f1": value, "exact_match": 0}
                if similarity and variant in similarity:
                    stored["similarity"] = similarity[variant][number]
                if looped and variant in looped:
                    stored["looped"] = looped[variant][number]
                connection.execute(
                    text("INSERT INTO eval_answers (run_id, question_id, variant, answer, scores, latency_seconds) "
                         "VALUES (:r, :q, :v, 'a', CAST(:s AS jsonb), :l)"),
                    {"r": run_id, "q": question_id, "v": variant, "s": json.dumps(stored),
                     "l": latency[variant]},
                )
    return run_id


def noisy(rng, mean: float, n: int) -> list[float]:
    return [float(x) for x in np.clip(rng.normal(mean, 0.1, n), 0, 1)]


@pytest.fixture
def exam(db):
    exam_id, questions = insert_exam(db, None)
    yield exam_id, questions
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM exams WHERE id = :e"), {"e": exam_id})


def numbers(sentence: str) -> list[str]:
    return re.findall(r"[+-]?\d+\.\d+|\d[\d,]* s\b", sentence)


def test_measured_rag_gain_is_named_with_its_numbers(db, exam, adapter):
    exam_id, questions = exam
    rng = np.random.default_rng(0)
    insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": noisy(rng, 0.5, 30)}, {"base": 0.9, "rag": 1.8})
    advice = advise(db)
    assert advice.recommendation == "rag" and advice.measured
    lead = advice.reasons[0]
    assert lead.startswith("Base + RAG +0.") and "token F1 over the base model (95% CI +0." in lead and "at 1.8 s per answer" in lead
    assert len(numbers(lead)) >= 2, lead
    assert "--variants ft,rag+ft" in advice.next_step  # the fine-tuned variants are not scored yet
    assert {e.what for e in advice.evidence} >= {"token F1: Base + RAG − Base model", "latency: Base + RAG"}

    # The adapter's run: as good as RAG alone, slower, and it cost training time → RAG stays.
    insert_run(db, exam_id, questions, {"ft": noisy(rng, 0.12, 30), "rag+ft": [s + 0.001 for s in noisy(rng, 0.5, 30)]},
               {"ft": 1.0, "rag+ft": 2.5}, adapter=adapter)
    advice = advise(db, AdvisorAnswers(changes="rarely", traceable=False, house_style=True, training_examples=">1000"))
    assert advice.recommendation == "rag", advice.reasons
    assert any("no measurable gain" in r and "42 s of training" in r and len(numbers(r)) >= 3 for r in advice.reasons), advice.reasons
    assert any("pointed to Fine-tuning" in r for r in advice.reasons)
    assert any(e.unit == "s of training" and e.value == 42.0 for e in advice.evidence)


def test_measured_gain_of_both_over_rag_recommends_both(db, exam, adapter):
    exam_id, questions = exam
    rng = np.random.default_rng(1)
    rag = noisy(rng, 0.4, 30)
    insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": rag}, {"base": 0.9, "rag": 1.8})
    insert_run(db, exam_id, questions, {"ft": noisy(rng, 0.2, 30), "rag+ft": [min(1.0, s + 0.25) for s in rag]},
               {"ft": 1.0, "rag+ft": 2.1}, adapter=adapter)
    advice = advise(db)
    assert advice.recommendation == "rag+fine-tune"
    lead = advice.reasons[0]
    assert "over RAG alone" in lead and "at 2.1 s per answer, after 42 s of training" in lead and len(numbers(lead)) >= 3
    assert advice.as_dict()["evidence"][0]["text"].startswith("token F1: Base model: 0.")


def test_a_gain_in_token_f1_alone_is_flagged_by_the_similarity_and_the_loops_are_named(db, exam):
    """Token F1 can rise because answers got shorter or stopped looping; the advisor says when the
    similarity to the reference does not confirm the gain, and how often each variant looped."""
    exam_id, questions = exam
    rng = np.random.default_rng(4)
    same = noisy(rng, 0.6, 30)
    insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": noisy(rng, 0.5, 30)}, {"base": 0.9, "rag": 1.8},
               similarity={"base": same, "rag": [s + float(rng.normal(0, 0.02)) for s in same]},
               looped={"base": [1.0] * 12 + [0.0] * 18, "rag": [1.0] * 3 + [0.0] * 27})
    advice = advise(db)
    assert advice.recommendation == "rag" and advice.reasons[0].startswith("Base + RAG +0.")
    caveat = advice.reasons[1]
    assert caveat.startswith("Similarity to the reference shows no detectable difference") and len(numbers(caveat)) >= 3, caveat
    assert "Compare page" in caveat
    assert advice.reasons[2] == "Answers that looped: the base model 40%, Base + RAG 10%."

    insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": noisy(rng, 0.5, 30)}, {"base": 0.9, "rag": 1.8},
               similarity={"base": noisy(rng, 0.3, 30), "rag": noisy(rng, 0.7, 30)})
    agreed = advise(db)
    assert agreed.reasons[1].startswith("Similarity to the reference agrees: +0."), agreed.reasons
    assert not any("separate runs" in r for r in agreed.reasons)  # base and RAG timed in one run


def test_latencies_from_separate_runs_are_not_weighed_without_a_warning(db, exam, adapter):
    exam_id, questions = exam
    rng = np.random.default_rng(5)
    insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": noisy(rng, 0.5, 30)}, {"base": 0.9, "rag": 1.8})
    insert_run(db, exam_id, questions, {"ft": noisy(rng, 0.1, 30), "rag+ft": noisy(rng, 0.5, 30)}, {"ft": 5.0, "rag+ft": 9.0},
               adapter=adapter)
    advice = advise(db)
    assert any("separate runs" in r and "one run" in r for r in advice.reasons), advice.reasons


def test_a_knowledge_update_run_is_not_weighed(db, exam):
    exam_id, questions = exam
    rng = np.random.default_rng(3)
    first = insert_run(db, exam_id, questions, {"base": noisy(rng, 0.1, 30), "rag": noisy(rng, 0.5, 30)}, {"base": 1, "rag": 2})
    insert_run(db, exam_id, questions[:3], {"base": [0.0] * 3, "rag": [1.0] * 3}, {"base": 9, "rag": 9},
               settings='{"knowledge_update": {"document": "memo.txt"}, "reference_overrides": {"1": "new"}}')
    advice = advise(db)
    assert advice.exam is not None and all(e.source.endswith(f"eval run {first}") for e in advice.evidence)
    assert "latency: Base + RAG" in {e.what for e in advice.evidence if e.value == 2}


def test_no_detectable_difference_falls_back_on_the_answers(db, exam):
    exam_id, questions = exam
    rng = np.random.default_rng(2)
    insert_run(db, exam_id, questions[:6], {"base": noisy(rng, 0.3, 6), "rag": noisy(rng, 0.3, 6)}, {"base": 0.9, "rag": 1.8})
    advice = advise(db, AdvisorAnswers(changes="weekly+"))
    assert advice.recommendation == "rag"
    assert advice.reasons[0].startswith("No variant is measurably better yet") and len(numbers(advice.reasons[0])) >= 2


# --- the guided path --------------------------------------------------------------------------


def states(steps) -> dict[str, str]:
    return {step.key: step.state for step in steps}


def test_guided_path_on_an_empty_collection_and_with_an_exam(db, collection, plant):
    steps = guided_path_state(db, collection)
    assert [s.key for s in steps] == ["documents", "exam", "score-base-rag", "fine-tune", "score-ft", "advisor"]
    assert set(states(steps).values()) == {"to do"}
    assert "no documents yet" in steps[0].detail and steps[1].page == "pages/exams.py"

    name = f"path-{uuid.uuid4().hex[:6]}"
    exam_id, questions = insert_exam(db, plant, questions=3, name=name)
    try:
        steps = guided_path_state(db, plant)
        assert states(steps) == {"documents": "done", "exam": "done", "score-base-rag": "to do", "fine-tune": "to do",
                                 "score-ft": "to do", "advisor": "to do"}
        assert "3 questions" in steps[1].detail and "--variants base,rag" in steps[2].command

        insert_run(db, exam_id, questions, {"base": [0.1] * 3, "rag": [0.5] * 3}, {"base": 1, "rag": 2})
        with db.engine.begin() as connection:  # an evaluation job queued for the fine-tuned variants
            connection.execute(text("INSERT INTO jobs (kind, title, params) VALUES ('evaluate', 'Score ft', "
                                    "CAST(:p AS jsonb))"), {"p": f'{{"exam": "{name}", "variants": ["ft", "rag+ft"]}}'})
        steps = guided_path_state(db, plant)
        assert states(steps)["score-base-rag"] == "done" and states(steps)["score-ft"] == "running"
    finally:
        with db.engine.begin() as connection:
            connection.execute(text("DELETE FROM exams WHERE id = :e"), {"e": exam_id})
            connection.execute(text("DELETE FROM jobs WHERE kind = 'evaluate'"))


# --- the pages --------------------------------------------------------------------------------


@pytest.fixture
def app(settings):
    st.cache_resource.clear()  # the app's cached Database must follow this module's settings
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def compare_page(at: AppTest, tiny_llama: str) -> AppTest:
    at.session_state["compare_model"] = "Other (Hugging Face id or folder)…"
    at.session_state["compare_model_other"] = tiny_llama
    at.session_state["compare_max_new_tokens"] = 4
    at.switch_page("pages/compare.py").run()
    assert not at.exception and not at.error
    return at


def test_compare_page_shows_four_answers_with_timings_and_sources(app, db, plant, adapter, tiny_llama):
    at = compare_page(app, tiny_llama)
    at.text_area(key="compare_question").set_value(QUESTION)
    at.selectbox(key="compare_collection").set_value(plant)
    at.selectbox(key="compare_adapter").set_value(adapter)
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    headings = [m.value for m in at.markdown if m.value.startswith("**")]
    assert headings == ["**Base model**", "**Base + RAG**", f"**Fine-tuned ({adapter})**", f"**Fine-tuned + RAG ({adapter})**"]
    timings = [c.value for c in at.caption if " tokens" in c.value and "first token" in c.value]
    assert len(timings) == 4
    assert sum(c.value == "Sources (cited ones marked ★)" for c in at.caption) == 2  # the two RAG answers
    assert any("Relief valve" in t.value or "relief valve" in t.value for t in at.text)  # the memo's passage
    assert not at.session_state["compare_shown"].blind

    at.run()  # a rerun shows the same answers without generating them again
    assert [m.value for m in at.markdown if m.value.startswith("**")] == headings


def test_blind_vote_is_recorded_then_the_labels_are_revealed(app, db, plant, adapter, tiny_llama):
    at = compare_page(app, tiny_llama)
    before = len(list_votes(db))
    at.text_area(key="compare_question").set_value(QUESTION)
    at.selectbox(key="compare_collection").set_value(plant)
    at.selectbox(key="compare_adapter").set_value(adapter)
    at.toggle(key="compare_blind").set_value(True)
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error
    assert [m.value for m in at.markdown if m.value.startswith("**")] == ["**Answer A**", "**Answer B**", "**Answer C**", "**Answer D**"]
    assert not any("first token" in c.value for c in at.caption)  # timings and passages would tell
    order = dict(at.session_state["compare_shown"].order)

    at.run()  # the order survives a rerun
    assert at.session_state["compare_shown"].order == order
    at.button(key="compare_submit_vote").click().run()  # no pick yet
    assert [e.value for e in at.error] == ["Pick the best answer, or “tie”, or “all wrong”."]
    assert len(list_votes(db)) == before and at.session_state["compare_shown"].order == order
    at.radio(key="compare_choice").set_value("B")
    at.text_input(key="compare_note").set_value("B cites the memo")
    at.button(key="compare_submit_vote").click().run()
    assert not at.exception and not at.error
    (vote,) = list_votes(db)[: len(list_votes(db)) - before]
    assert vote.choice == order["B"] and vote.note == "B cites the memo" and vote.shown_order == list(order.values())
    assert set(vote.answers) == {"base", "rag", "ft", "rag+ft"} and vote.adapter == adapter
    success = at.success[0].value
    assert success.startswith("Vote recorded: B (") and all(f"{label} was" in success for label in "ABCD")
    assert any(m.value.startswith("**Answer A: ") for m in at.markdown)
    assert sum("first token" in c.value for c in at.caption) == 4  # revealed with their timings
    assert any(i.value.startswith("The order is not yet decided") for i in at.info)


def test_advisor_page_answers_the_questions(app):
    at = app.switch_page("pages/advisor.py").run()
    assert not at.exception and not at.error
    assert at.subheader[1].value == "Recommendation: RAG" or any(s.value == "Recommendation: RAG" for s in at.subheader)
    for key, value in (("changes", "rarely"), ("traceable", "no"), ("house_style", "yes"), ("training_examples", ">1000")):
        at.radio(key=f"advisor_{key}").set_value(value)
    at.run()
    assert not at.exception
    assert any(s.value == "Recommendation: Fine-tuning" for s in at.subheader)
    assert any("Next:" in i.value for i in at.info)


# --- the command line -------------------------------------------------------------------------


def test_cli_compare_votes_and_advise(db, plant, tiny_llama, capsys):
    from core.cli import main

    assert main(["compare", QUESTION, "-c", plant, "--model", tiny_llama, "--max-new-tokens", "3", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["variant"] for a in answers] == ["base", "rag"] and answers[1]["sources"][0]["filename"] == "memo.txt"
    assert all(a["timings"]["new_tokens"] >= 1 and a["timings"]["total_seconds"] > 0 for a in answers)

    assert main(["compare", QUESTION, "-c", plant, "--model", tiny_llama, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "== base: Base model ==" in out and "== rag: Base + RAG ==" in out and "[1] memo.txt" in out
    assert out.count("first token") == 2 and " tokens · " in out

    assert main(["compare", QUESTION, "-c", plant, "--model", tiny_llama, "--variants", "base,ft"]) == 2
    assert "needs a fine-tuned adapter" in capsys.readouterr().err

    for choice in ("rag", "rag", "tie"):
        vote(db, choice, ["base", "rag"], model="m-cli")
    assert main(["votes", "ranking", "--model", "m-cli", "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)
    assert not ranking["decided"] and ranking["votes"] == 3 and ranking["variants"][0]["variant"] == "rag"
    assert main(["votes", "ranking", "--model", "m-cli"]) == 0
    assert "The order is not yet decided" in capsys.readouterr().out
    assert main(["votes", "list", "--model", "m-cli"]) == 0
    assert capsys.readouterr().out.count("q?") == 3

    assert main(["advise", "--changes", "rarely", "--traceable", "no", "--house-style", "yes",
                 "--training-examples", "100-1000", "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    assert advice["recommendation"] == "fine-tune" and advice["answers"]["house_style"] is True
    assert main(["advise"]) == 0
    assert capsys.readouterr().out.startswith("Recommendation: ")


def test_home_page_shows_the_guided_path(app, plant):
    at = app.switch_page("pages/home.py").run()
    assert not at.exception
    at.selectbox(key="home_path_collection").set_value(plant).run()
    assert not at.exception
    steps = [m.value for m in at.markdown if "**1." in m.value or "**6." in m.value]
    assert any("1. Pick a collection with documents** · done" in s for s in steps)
    assert any("6. See the advisor's verdict** · to do" in s for s in steps)
