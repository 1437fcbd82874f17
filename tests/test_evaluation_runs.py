"""Evaluation runs: scoring and diagnosis on hand-made answers, then whole runs through the real worker
on the real database with a tiny random Llama (and the bundled SmolLM2): base, RAG, fine-tuned and
both; rerun identity; cancel and resume; refusals before any work; the knowledge-update check; the
command line and the Evaluation page.

With random weights the generated text is junk, so the runs assert on what does not depend on it:
rows, retrieval, citations, abstentions of questions retrieval finds nothing for, and identity."""

from __future__ import annotations

import csv
import io
import json
import threading
import time

import pytest
import samples
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from training_helpers import chat, make_dataset, wait_for

from core.answers.rag import NOTHING_FOUND
from core.cli import main
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.errors import UserError
from core.evaluation.results import (
    AnswerRow,
    compare_runs,
    list_runs,
    load_results,
    question_details,
    score_table,
    summarize,
    to_csv,
    to_json,
)
from core.evaluation.scoring import (
    ABSTAINED,
    CORRECT,
    READING_MISS,
    RETRIEVAL_MISS,
    UNSUPPORTED,
    WRONG,
    ExamItem,
    Passage,
    answer_supported,
    diagnose,
    passage_overlap,
    score_answer,
)
from core.jobs.queue import cancel_job, get_job, job_log_tail, resume_job
from core.jobs.worker import run_worker
from core.models import BUNDLED_MODEL

APP = "../streamlit_app.py"
TOKENS = 12  # max new tokens: random weights write junk, a few tokens of it are enough

# (question, reference, source document, source passage); the last one is out of scope.
QUESTIONS = [
    ("At what pressure does the relief valve of boiler B2 open?", "3.5 bar", "memo.txt",
     "The relief valve of boiler B2 opens at 3.5 bar."),
    ("How often is the mechanical seal replaced?", "Every 2,000 operating hours.", "pumps.md",
     "Replace the mechanical seal every 2,000 operating hours."),
    ("Which valve should never throttle?", "A gate valve.", "valves.html",
     "A gate valve is either fully open or fully closed; never throttle with it."),
    ("What moves water in a centrifugal pump?", "A spinning impeller.", "pumps.md",
     "A centrifugal pump moves water with a spinning impeller."),
]
OUT_OF_SCOPE = "Who won the football world cup in 1954?"
TRAINING = [
    ("When are the bearings checked?", "Once a month, for noise."),
    ("What happens if the pump runs dry?", "The seal overheats within seconds."),
    ("What opens at 3.5 bar?", "The relief valve of boiler B2."),
    ("Which pump moves the cooling water?", "Pump P-1."),
]


# --- scoring on hand-made answers -----------------------------------------------------------------


ITEM = ExamItem(1, "At what pressure does the relief valve open?", "3.5 bar", source_document="memo.txt",
                source_passage="The relief valve of boiler B2 opens at 3.5 bar.")
SOURCE = Passage(2, 11, 7, "memo.txt", "Boiler memo. The relief valve of boiler B2 opens at 3.5 bar. Test it every quarter.", 2)
OTHER = Passage(1, 10, 5, "pumps.md", "Replace the mechanical seal every 2,000 operating hours.", 1)
FAR = Passage(3, 12, 5, "pumps.md", "A centrifugal pump moves water with a spinning impeller.", None)


@pytest.mark.parametrize(("case", "expected"), [
    (dict(out_of_scope=True, correct=False, abstained=True, rag=True), CORRECT),
    (dict(out_of_scope=True, correct=False, abstained=False, rag=False), WRONG),
    (dict(out_of_scope=False, correct=True, abstained=False, rag=False), CORRECT),
    (dict(out_of_scope=False, correct=False, abstained=True, rag=False), ABSTAINED),
    (dict(out_of_scope=False, correct=False, abstained=False, rag=False), WRONG),
    (dict(out_of_scope=False, correct=True, abstained=False, rag=True, source_known=True, source_in_top_k=True,
          supported=True), CORRECT),
    (dict(out_of_scope=False, correct=True, abstained=False, rag=True, source_known=True, source_in_top_k=True,
          supported=False), UNSUPPORTED),
    (dict(out_of_scope=False, correct=False, abstained=False, rag=True, source_known=True, source_in_top_k=False),
     RETRIEVAL_MISS),
    (dict(out_of_scope=False, correct=False, abstained=True, rag=True, source_known=True, source_in_top_k=False),
     RETRIEVAL_MISS),  # it could not have known: the cause is retrieval
    (dict(out_of_scope=False, correct=False, abstained=True, rag=True, source_known=True, source_in_top_k=True),
     ABSTAINED),
    (dict(out_of_scope=False, correct=False, abstained=False, rag=True, source_known=True, source_in_top_k=True),
     READING_MISS),
    (dict(out_of_scope=False, correct=False, abstained=False, rag=True, source_known=False), WRONG),
])
def test_diagnosis_rules(case, expected):
    assert diagnose(**case) == expected


def test_the_source_is_found_by_its_passage_and_scored_by_rank_and_citation():
    # The source passage came second: hit@1 0, hit@2 1, MRR 1/2; the answer cites [2], the source.
    scored = score_answer(ITEM, "It opens at 3.5 bar [2].", rag=True, retrieved=[OTHER, SOURCE, FAR], cited_numbers=[2],
                          top_k=2, similarity=0.8)
    assert scored.scores["hit_at_k"] == 1.0 and scored.scores["mrr"] == 0.5 and scored.scores["cited_source"] == 1.0
    assert scored.source_ranks == [2] and scored.cited_chunks == [11]
    # "It opens at 3.5 bar [2]." → without the citation, normalised: "it opens at 35 bar" against "35 bar":
    # 2 shared tokens, precision 2/5, recall 2/2 → F1 = 2 · 0.4 · 1 / 1.4 = 4/7
    assert scored.scores["token_f1"] == pytest.approx(4 / 7) and scored.scores["exact_match"] == 0.0
    assert scored.diagnosis == CORRECT and scored.scores["similarity"] == 0.8 and scored.scores["abstained"] == 0.0
    assert score_answer(ITEM, "It opens at 3.5 bar [2].", rag=True, retrieved=[OTHER, SOURCE, FAR], cited_numbers=[2],
                        top_k=1).scores["hit_at_k"] == 0.0


def test_a_right_answer_that_cites_nothing_or_another_passage_is_unsupported():
    uncited = score_answer(ITEM, "3.5 bar", rag=True, retrieved=[SOURCE, OTHER], cited_numbers=[])
    assert uncited.scores["exact_match"] == 1.0 and uncited.scores["cited_source"] == 0.0
    assert uncited.diagnosis == UNSUPPORTED
    wrong_citation = score_answer(ITEM, "3.5 bar [1]", rag=True, retrieved=[OTHER, SOURCE], cited_numbers=[1])
    assert wrong_citation.diagnosis == UNSUPPORTED  # "3.5 bar" is not in the pump passage it cites
    assert answer_supported("3.5 bar [2]", [SOURCE.text]) and not answer_supported("3.5 bar", [])


def test_retrieval_and_reading_misses():
    missed = score_answer(ITEM, "The seal every 2,000 hours [1].", rag=True, retrieved=[OTHER, FAR], cited_numbers=[1])
    assert missed.scores["hit_at_k"] == 0.0 and missed.scores["mrr"] == 0.0 and missed.diagnosis == RETRIEVAL_MISS
    read_wrong = score_answer(ITEM, "Every quarter [1].", rag=True, retrieved=[SOURCE, OTHER], cited_numbers=[1])
    assert read_wrong.scores["hit_at_k"] == 1.0 and read_wrong.diagnosis == READING_MISS


def test_without_rag_and_without_a_source_retrieval_scores_are_not_applicable():
    base = score_answer(ITEM, "3.5 bar", rag=False)
    assert base.scores["hit_at_k"] is base.scores["mrr"] is base.scores["cited_source"] is None
    assert base.diagnosis == CORRECT
    unsourced = ExamItem(2, "What is it?", "A pump.")
    assert score_answer(unsourced, "No idea.", rag=True, retrieved=[OTHER]).scores["hit_at_k"] is None


def test_a_chunk_id_or_a_document_alone_names_the_source():
    by_chunk = ExamItem(3, "q", "r", chunk_id=11)
    assert score_answer(by_chunk, "x", rag=True, retrieved=[OTHER, SOURCE]).scores["mrr"] == 0.5
    by_document = ExamItem(4, "q", "r", document_id=7)  # memo.txt: its chunk came second
    assert score_answer(by_document, "x", rag=True, retrieved=[SOURCE, OTHER]).scores["mrr"] == 0.5
    # a passage of another document never counts, however similar its text
    elsewhere = ExamItem(5, "q", "r", document_id=99, source_passage=SOURCE.text)
    assert score_answer(elsewhere, "x", rag=True, retrieved=[SOURCE]).scores["hit_at_k"] == 0.0
    assert passage_overlap(SOURCE.text, ITEM.source_passage) == 1.0  # the whole passage is in the chunk
    assert passage_overlap(OTHER.text, ITEM.source_passage) < 0.5


def test_out_of_scope_questions_score_the_abstention():
    item = ExamItem(6, OUT_OF_SCOPE, "The documents do not say.", out_of_scope=True)
    abstained = score_answer(item, NOTHING_FOUND.format(collection="plant"), rag=True, retrieved=[], similarity=0.1)
    assert abstained.diagnosis == CORRECT and abstained.scores["abstention"] == 1.0
    assert abstained.scores["token_f1"] == abstained.scores["exact_match"] == abstained.scores["similarity"] == 1.0
    assert abstained.scores["hit_at_k"] is None
    invented = score_answer(item, "Germany won it.", rag=False, similarity=0.9)
    assert invented.diagnosis == WRONG and invented.scores["token_f1"] == 0.0 and invented.scores["abstention"] == 0.0


def test_a_looped_answer_is_marked_even_when_the_loop_was_cut():
    assert score_answer(ITEM, "The answer is", rag=False, stopped_by="loop").scores["looped"] == 1.0
    assert score_answer(ITEM, "3.5 bar", rag=False, stopped_by="end of turn").scores["looped"] == 0.0


def row(question_id: int, variant: str, f1: float, latency: float = 1.0) -> AnswerRow:
    return AnswerRow(question_id, question_id, f"q{question_id}", "r", False, variant, "a",
                     {"token_f1": f1, "exact_match": float(f1 == 1.0), "hit_at_k": None}, CORRECT if f1 >= 0.5 else WRONG,
                     [], [], 10, 5, latency, 0.1, "end of turn")


def test_summary_intervals_and_verdicts_never_call_a_winner_when_the_interval_crosses_zero():
    # rag beats base on every one of 8 questions by 0.5: "better"; ft vs base: +0.5 on half, -0.5 on half: crosses 0.
    answers = [row(q, "base", 0.25, latency=1.0) for q in range(8)] + [row(q, "rag", 0.75, latency=2.0) for q in range(8)]
    answers += [row(q, "ft", 0.75 if q % 2 else 0.0) for q in range(8)]
    summary = summarize(answers, ["base", "rag", "ft"])
    f1 = summary["variants"]["rag"]["token_f1"]
    assert f1["mean"] == f1["low"] == f1["high"] == 0.75 and f1["n"] == 8
    assert summary["variants"]["base"]["hit_at_k"] is None  # not applicable, not 0
    pairs = {(p["a"], p["b"], p["metric"]): p for p in summary["pairs"]}
    assert pairs[("base", "rag", "token_f1")]["verdict"] == "worse"
    assert pairs[("base", "rag", "token_f1")]["mean"] == pytest.approx(-0.5)
    assert pairs[("base", "ft", "token_f1")]["low"] < 0 < pairs[("base", "ft", "token_f1")]["high"]
    assert pairs[("base", "ft", "token_f1")]["verdict"] == "no detectable difference"
    assert pairs[("base", "rag", "latency_seconds")]["verdict"] == "better"  # 1 s instead of 2: lower is better
    assert summary["diagnoses"]["rag"][CORRECT] == 8 and summary["diagnoses"]["base"][WRONG] == 8
    assert summarize(answers, ["base", "rag", "ft"]) == summary  # fixed seed: the same intervals every time
    table = {r["variant"]: r for r in score_table(summary)}
    assert table["rag"]["token F1"] == "0.75 [0.75, 0.75]" and table["rag"]["hit@k"] == "–"


# --- runs through the worker ----------------------------------------------------------------------


def insert_exam(db, name: str, collection: str | None, questions, out_of_scope: tuple[str, ...] = ()) -> dict[str, int]:
    """An exam written straight into the tables; returns question text → id."""
    with db.engine.begin() as connection:
        exam_id = connection.execute(
            text("INSERT INTO exams (name, collection_id, source) "
                 "VALUES (:n, (SELECT id FROM collections WHERE name = :c), 'import') RETURNING id"),
            {"n": name, "c": collection},
        ).scalar_one()
        ids = {}
        for ordinal, (question, reference, document, passage) in enumerate(questions, start=1):
            ids[question] = connection.execute(
                text("INSERT INTO exam_questions (exam_id, ordinal, question, reference_answer, source_document, "
                     "source_passage, document_id) VALUES (:e, :o, :q, :r, :d, :p, "
                     "(SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
                     " WHERE c.name = :c AND d.filename = :d)) RETURNING id"),
                {"e": exam_id, "o": ordinal, "q": question, "r": reference, "d": document, "p": passage, "c": collection},
            ).scalar_one()
        for ordinal, question in enumerate(out_of_scope, start=len(questions) + 1):
            ids[question] = connection.execute(
                text("INSERT INTO exam_questions (exam_id, ordinal, question, reference_answer, out_of_scope) "
                     "VALUES (:e, :o, :q, 'The documents do not say.', true) RETURNING id"),
                {"e": exam_id, "o": ordinal, "q": question},
            ).scalar_one()
    return ids


@pytest.fixture(scope="module")
def plant(db):
    create_collection(db, "plant")
    for name, data in [("pumps.md", samples.MARKDOWN), ("memo.txt", samples.TEXT.encode()), ("valves.html", samples.HTML)]:
        assert ingest_bytes(db, "plant", name, data).ok
    return "plant"


@pytest.fixture(scope="module")
def exam(db, plant):
    insert_exam(db, "plant-exam", plant, QUESTIONS, (OUT_OF_SCOPE,))
    return "plant-exam"


def counts(db) -> tuple[int, int]:
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT (SELECT count(*) FROM eval_runs), (SELECT count(*) FROM jobs)")).one()


def answers_of(db, run_id: int) -> dict[tuple[int, str], dict]:
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM eval_answers WHERE run_id = :r"), {"r": run_id}).all()
    return {(r.question_id, r.variant): dict(r._mapping) for r in rows}


def run_to_end(db, run_id: int, job) -> None:
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id, 60)])


@pytest.fixture(scope="module")
def first_run(db, exam, tiny_llama):
    from core.evaluation.run import submit_evaluation

    run_id, job = submit_evaluation(db, exam=exam, variants="base,rag", model=tiny_llama, max_new_tokens=TOKENS, batch_size=3)
    assert job.kind == "evaluate" and job.title == "Evaluate plant-exam: base, rag"
    run_to_end(db, run_id, job)
    return run_id


def test_a_run_answers_every_question_with_every_variant_and_scores_it(db, first_run, exam):
    results = load_results(db, first_run)
    run = results.run
    assert run.finished and run.variants == ["base", "rag"] and run.collection == "plant" and run.job_status == "succeeded"
    assert len(results.answers) == 10 and run.answers == 10 and run.questions == 5
    by = {(a.question, a.variant): a for a in results.answers}
    boiler = by[(QUESTIONS[0][0], "rag")]
    assert boiler.retrieved[0]["filename"] == "memo.txt" and boiler.retrieved[0]["is_source"]
    assert boiler.scores["hit_at_k"] == 1.0 and boiler.scores["mrr"] == 1.0 and boiler.diagnosis != RETRIEVAL_MISS
    assert boiler.prompt_tokens > 20 and boiler.latency_seconds > 0 and boiler.stopped_by
    assert all(a.scores["hit_at_k"] is not None for a in results.answers if a.variant == "rag" and not a.out_of_scope)
    base = by[(QUESTIONS[0][0], "base")]
    assert base.retrieved == [] and base.scores["hit_at_k"] is None and base.new_tokens <= TOKENS
    # nothing in the plant's documents is about football: RAG abstains without asking the model
    football = by[(OUT_OF_SCOPE, "rag")]
    assert football.answer == NOTHING_FOUND.format(collection="plant") and football.stopped_by == "nothing found"
    assert football.diagnosis == CORRECT and football.scores["abstention"] == 1.0 and football.scores["token_f1"] == 1.0

    summary = results.summary
    assert set(summary["variants"]) == {"base", "rag"} and summary["questions"] == 5
    assert summary["variants"]["rag"]["hit_at_k"]["mean"] == 1.0 and summary["variants"]["base"]["hit_at_k"] is None
    assert {p["metric"] for p in summary["pairs"]} >= {"token_f1", "similarity", "abstention"}
    assert sum(summary["diagnoses"]["rag"].values()) == 5
    job = get_job(db, run.job_id)
    assert job.progress["done"] == job.progress["total"] == 10 and job.progress["unit"] == "answers"
    assert job.result["run_id"] == first_run

    detail = question_details(results, boiler.question_id)
    assert list(detail.answers) == ["base", "rag"] and detail.reference == "3.5 bar"
    exported = list(csv.DictReader(io.StringIO(to_csv(results))))
    assert len(exported) == 10 and {"answer", "token_f1", "diagnosis", "retrieved"} <= set(exported[0])
    assert json.loads(json.dumps(to_json(results)))["summary"]["questions"] == 5


def test_a_rerun_from_the_command_line_gives_identical_answers_and_scores(db, first_run, exam, tiny_llama, capsys):
    assert main(["eval", "--exam", exam, "--variants", "base,rag", "--model", tiny_llama, "--max-new-tokens", str(TOKENS),
                 "--batch-size", "3", "--no-wait", "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    run_id = queued["run_id"]
    assert queued["job"]["kind"] == "evaluate" and queued["job"]["params"]["run_id"] == run_id
    run_to_end(db, run_id, get_job(db, queued["job"]["id"]))
    first, second = answers_of(db, first_run), answers_of(db, run_id)
    assert first.keys() == second.keys()
    for key in first:
        assert (second[key]["answer"], second[key]["scores"], second[key]["diagnosis"]) == (
            first[key]["answer"], first[key]["scores"], first[key]["diagnosis"])
    comparison = compare_runs(db, run_id)
    assert comparison["earlier"] == first_run
    f1 = [r for r in comparison["rows"] if r["metric"] == "token_f1"]
    assert {r["variant"] for r in f1} == {"base", "rag"}
    assert all(r["mean"] == 0 and r["verdict"] == "no detectable difference" for r in f1)
    assert [r.id for r in list_runs(db, exam)][:2] == [run_id, first_run]


ANSWERS = 16  # 8 questions, base and rag


def test_cancel_then_resume_finishes_without_duplicates(db, plant, tiny_llama):
    from core.evaluation.run import submit_evaluation

    many = [(f"Question {n}: at what pressure does the relief valve of boiler B2 open?", "3.5 bar", "memo.txt",
             "The relief valve of boiler B2 opens at 3.5 bar.") for n in range(ANSWERS // 2)]
    insert_exam(db, "long-exam", plant, many)
    run_id, job = submit_evaluation(db, exam="long-exam", variants="base,rag", model=tiny_llama, max_new_tokens=TOKENS,
                                    batch_size=1)
    worker = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True}, daemon=True)
    worker.start()
    wait_for(lambda: len(answers_of(db, run_id)) >= 1, timeout=120, every=0.05, message="the first answer")
    # Hold the job's next insert back until its next cancel check (every 2 s) is due: on any machine,
    # however fast, the cancel then lands in the middle of the run.
    with db.engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE eval_answers IN SHARE MODE"))
        cancel_job(db, job.id)
        time.sleep(2.5)
        blocker.rollback()
    worker.join(timeout=60)
    assert get_job(db, job.id).status == "cancelled"
    stored = len(answers_of(db, run_id))
    assert 1 <= stored < ANSWERS, "the cancel came too late to test a resume: make the exam longer"
    assert not load_results(db, run_id).run.finished

    resume_job(db, job.id)
    run_to_end(db, run_id, job)
    assert len(answers_of(db, run_id)) == ANSWERS  # UNIQUE (run, question, variant): none twice, none missing
    log = "\n".join(job_log_tail(db, job.id, 400))
    assert f"{stored} of {ANSWERS} answers already stored, continuing." in log
    results = load_results(db, run_id)
    assert results.run.finished and results.summary["answers"] == ANSWERS


def test_refusals_come_before_any_work(db, exam, plant, tiny_llama, tiny_phi3, tmp_path):
    from core.evaluation.run import submit_evaluation

    import_peft_adapter(db, tiny_phi3, "phi3-adapter", tmp_path / "phi3-adapter", ["qkv_proj"])
    create_collection(db, "empty-shelf")
    before = counts(db)
    cases = [
        (dict(exam="no-such-exam", variants="base"), "No exam named 'no-such-exam'"),
        (dict(exam=exam, variants="base,magic"), "Unknown variant 'magic'"),
        (dict(exam=exam, variants="base,ft"), "need a fine-tuned adapter"),
        (dict(exam=exam, variants="rag+ft"), "need a fine-tuned adapter"),
        (dict(exam=exam, variants="ft", adapter="nope"), "No adapter named 'nope'"),
        (dict(exam=exam, variants="ft", adapter="phi3-adapter"), "was trained on .*tiny-phi3"),
        (dict(exam=exam, variants="rag", collection="empty-shelf"), "has no documents"),
        (dict(exam=exam, variants="rag", collection="no-shelf"), "No collection named 'no-shelf'"),
        (dict(exam=exam, variants="base", batch_size=0), "batch size"),
    ]
    for arguments, message in cases:
        with pytest.raises(UserError, match=message):
            submit_evaluation(db, model=tiny_llama, max_new_tokens=TOKENS, **arguments)
    insert_exam(db, "no-collection-exam", None, [("What is a pump?", "A machine.", None, None)])
    with pytest.raises(UserError, match="need a collection"):
        submit_evaluation(db, exam="no-collection-exam", variants="rag", model=tiny_llama)
    assert counts(db) == before  # no run row, no job


def import_peft_adapter(db, base: str, name: str, folder, target_modules: list[str]) -> None:
    """A random LoRA adapter for `base`, made with PEFT and imported (no training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models.adapters import import_adapter

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=target_modules))
    model.save_pretrained(folder)
    import_adapter(db, folder, name)


@pytest.fixture(scope="module")
def adapter(db, tiny_llama):
    """A LoRA adapter trained on tiny_llama by a 4-step training job."""
    from test_training import QUICK, submit

    examples = [chat(q, a) for q, a in TRAINING]  # none of them an exam question: no leakage
    job = submit(db, make_dataset(db, "eval-facts", examples), "eval-lora", tiny_llama, settings=QUICK)
    run_worker(db, once=True)
    assert get_job(db, job.id).status == "succeeded", "\n".join(job_log_tail(db, job.id))
    return "eval-lora"


def test_an_adapter_trained_on_an_exam_question_is_refused(db, plant, adapter, tiny_llama):
    from core.evaluation.run import submit_evaluation

    insert_exam(db, "leaky-exam", plant, [("When are the bearings checked?", "Once a month.", "pumps.md", None)])
    before = counts(db)
    with pytest.raises(UserError, match="cannot be evaluated on exam 'leaky-exam'.*asks an exam question"):
        submit_evaluation(db, exam="leaky-exam", variants="base,ft", model=tiny_llama, adapter=adapter)
    assert counts(db) == before
    run_id, job = submit_evaluation(db, exam="leaky-exam", variants="base", model=tiny_llama, adapter=adapter)
    assert load_results(db, run_id).run.adapter is None  # no ft variant: the adapter is not part of the run
    cancel_job(db, job.id)


def test_all_four_variants_with_one_model_and_its_adapter(db, exam, adapter, tiny_llama, first_run):
    from core.evaluation.run import submit_evaluation

    run_id, job = submit_evaluation(db, exam=exam, variants="base,rag,ft,rag+ft", model=tiny_llama, adapter=adapter,
                                    max_new_tokens=TOKENS)
    run_to_end(db, run_id, job)
    results = load_results(db, run_id)
    assert results.run.adapter == adapter and len(results.answers) == 20
    assert len({(p["a"], p["b"]) for p in results.summary["pairs"]}) == 6
    by = {(a.question, a.variant): a for a in results.answers}
    assert by[(QUESTIONS[0][0], "rag+ft")].scores["hit_at_k"] == 1.0 and by[(QUESTIONS[0][0], "ft")].retrieved == []
    # one copy of the weights: the base and rag answers of this run equal those of the run without an adapter
    plain = {(a.question, a.variant): a.answer for a in load_results(db, first_run).answers}
    assert all(by[key].answer == answer for key, answer in plain.items())
    log = "\n".join(job_log_tail(db, job.id, 100))
    assert f"adapter {adapter}" in log


def test_knowledge_update_rag_reads_the_new_version_at_once(db, tiny_llama, adapter):
    from core.evaluation.knowledge_update import knowledge_update_check

    old = b"# Boiler B2\n\nThe relief valve of boiler B2 opens at 3.5 bar.\n\n## Pumps\n\nThe feed pump runs at 900 rpm.\n"
    new = old.replace(b"3.5 bar", b"4.2 bar")
    create_collection(db, "boiler-docs")
    assert ingest_bytes(db, "boiler-docs", "boiler.md", old).ok
    ids = insert_exam(db, "boiler-exam", "boiler-docs", [
        ("At what pressure does the relief valve of boiler B2 open?", "3.5 bar", "boiler.md",
         "The relief valve of boiler B2 opens at 3.5 bar.")])
    question = next(iter(ids.values()))
    before = counts(db)
    with pytest.raises(UserError, match="not in the collection"):
        knowledge_update_check(db, filename="other.md", data=new, exam="boiler-exam", model=tiny_llama)
    with pytest.raises(UserError, match="not questions of this exam"):
        knowledge_update_check(db, filename="boiler.md", data=new, exam="boiler-exam", model=tiny_llama,
                               new_references={question + 1000: "x"})
    assert counts(db) == before

    update = knowledge_update_check(db, filename="boiler.md", data=new, exam="boiler-exam", model=tiny_llama,
                                    adapter=adapter, new_references={question: "4.2 bar"}, max_new_tokens=TOKENS)
    assert update.question_ids == [question] and "replaced" in update.message
    run_to_end(db, update.run_id, update.job)
    results = load_results(db, update.run_id)
    assert results.run.variants == ["rag", "ft"] and results.run.settings["knowledge_update"]["document"] == "boiler.md"
    rag = next(a for a in results.answers if a.variant == "rag")
    given = [p for p in rag.retrieved if p["number"] is not None]
    assert "4.2 bar" in given[0]["text"] and given[0]["document_id"] == update.document_id and given[0]["is_source"]
    assert not any("3.5 bar" in p["text"] for p in rag.retrieved)
    assert rag.reference == "4.2 bar" and rag.scores["hit_at_k"] == 1.0
    ft = next(a for a in results.answers if a.variant == "ft")
    assert ft.retrieved == []  # the adapter answers from what it learnt: no passage can carry the change
    update_summary = results.summary["knowledge_update"]
    assert update_summary["rag"]["new_fact_in_passages"] == 1.0 and "new_fact_in_passages" not in update_summary["ft"]
    with db.engine.connect() as connection:
        linked = connection.execute(text("SELECT document_id FROM exam_questions WHERE id = :q"), {"q": question}).scalar()
    assert linked == update.document_id


def test_cli_shows_and_lists_runs(db, exam, tiny_llama, first_run, tmp_path, capsys):
    assert main(["eval", "show", str(first_run)]) == 0
    report = capsys.readouterr().out
    assert f"Run {first_run} · exam {exam}" in report and "token F1" in report and "Diagnoses:" in report
    assert "base vs rag" in report or "rag vs base" in report
    assert main(["eval", "show", str(first_run), "--json", "--csv", str(tmp_path / "run.csv")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"]["id"] == first_run and len(shown["answers"]) == 10
    assert len(list(csv.DictReader((tmp_path / "run.csv").open()))) == 10
    assert main(["eval", "runs", "--exam", exam]) == 0
    listed = capsys.readouterr().out
    assert f"{first_run:>4}  finished" in listed and "rag 0." in listed
    assert main(["eval", "--exam", exam, "--variants", "ft", "--model", tiny_llama]) == 2
    assert "need a fine-tuned adapter" in capsys.readouterr().err
    assert main(["eval", "show"]) == 2
    assert main(["eval", "--exam", exam, "--update-document", str(tmp_path / "missing.md")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "memo.txt").write_text("Boiler memo.\n\nThe relief valve of boiler B2 opens at 4.2 bar.\n")
    assert main(["eval", "--exam", exam, "--update-document", str(tmp_path / "memo.txt"), "--new-reference", "4.2 bar"]) == 2
    assert "QUESTION_ID=ANSWER" in capsys.readouterr().err


def test_evaluation_page_shows_a_finished_run(db, first_run):
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception
    assert any(o.startswith("plant-exam (5 questions") for o in at.selectbox(key="eval_exam").options)
    assert at.multiselect(key="eval_variants").value == ["base", "rag"]
    at.session_state["eval_tab"] = "Results"
    at.run()
    assert not at.exception
    at.selectbox(key="eval_run").select(first_run).run()
    assert not at.exception and [e.value for e in at.error] == []
    table = next(d.value for d in at.dataframe if "token F1" in d.value.columns and "variant" in d.value.columns)
    assert list(table["variant"]) == ["base", "rag"] and "token F1" in table.columns
    assert table.loc[table["variant"] == "rag", "hit@k"].iloc[0] == "1.00 [1.00, 1.00]"
    assert any("Pairwise" in s.value for s in at.subheader)
    at.selectbox(key="eval_question").select_index(0).run()
    assert not at.exception
    texts = [t.value for t in at.text]  # model text and questions as plain text, never Markdown
    boiler = [a for a in load_results(db, first_run).answers if a.question == QUESTIONS[0][0]]
    assert QUESTIONS[0][0] in texts and all((a.answer or "(empty answer)") in texts for a in boiler)
    assert any("memo.txt" in c.value and "source" in c.value for c in at.caption)  # the rag answer's passages


# --- the bundled model ------------------------------------------------------------------------------


def test_smollm2_run_on_three_questions(db, plant):
    from core.evaluation.run import submit_evaluation

    insert_exam(db, "smol-exam", plant, QUESTIONS[:3])
    run_id, job = submit_evaluation(db, exam="smol-exam", variants="base,rag", model=BUNDLED_MODEL, max_new_tokens=16)
    run_to_end(db, run_id, job)
    results = load_results(db, run_id)
    assert len(results.answers) == 6 and all(a.answer.strip() for a in results.answers)
    assert results.summary["variants"]["rag"]["hit_at_k"]["mean"] == 1.0
    assert all(0 <= a.scores["token_f1"] <= 1 and -1 <= a.scores["similarity"] <= 1 for a in results.answers)
