"""Exams on the real database: import (JSONL and CSV, every bad row named, nothing half-saved, each
question linked to its document and the chunk holding its passage), generation as a job through the
real worker, edits, the leakage rules (training data leaves exam documents out; an adapter trained
on them is refused), the CLI and the Exams page."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

import core.models.batch
from core.cli import main
from core.datasets import DatasetError, generate_text_dataset, list_examples
from core.datasets.generation import DUPLICATE, NO_PAIR
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection, document_chunks, list_documents
from core.errors import UserError
from core.evaluation.exam_job import submit_generate_exam
from core.evaluation.exams import (
    OUT_OF_SCOPE_ANSWER,
    ExamError,
    check_no_leakage,
    choose_heldout_documents,
    delete_exam,
    delete_question,
    exam_document_ids,
    export_exam,
    generate_exam,
    get_exam,
    list_exams,
    preview_exam,
    save_exam,
    save_question_edits,
    update_question,
)
from core.jobs.queue import cancel_job, get_job, job_log_tail
from core.jobs.worker import run_worker
from core.models.batch import BatchAnswer

APP = "../streamlit_app.py"
EQUIPMENT = [
    ("Pump P-1", "moves cooling water from the river to the condenser", "Replace its mechanical seal every 2,000 hours"),
    ("Boiler B2", "makes steam for the paper machine", "Test its relief valve every quarter; it opens at 3.5 bar"),
    ("Valve V-7", "is a gate valve on the main water line", "Exercise it fully once a year so it does not seize"),
    ("Fan F-3", "cools the tower and runs at 900 rpm", "Check the belt tension every month"),
    ("Compressor C-5", "supplies instrument air at 7 bar", "Drain the receiver every shift"),
    ("Tank T-9", "stores 40 cubic metres of caustic soda", "Inspect the level gauge every day"),
]


def add_documents(db, collection: str, entries=EQUIPMENT) -> None:
    for name, role, care in entries:
        body = f"{name}.\n\n{name} {role}.\n\nMaintenance: {care}.\n\nSafety: stop {name} before any work on it."
        outcome = ingest_bytes(db, collection, f"{name}.txt", body.encode())
        assert outcome.ok, outcome.message


@pytest.fixture(scope="module")
def plant(db):
    """Six documents of a few small chunks each."""
    create_collection(db, "plant", chunk_tokens=24, chunk_overlap=0)
    add_documents(db, "plant")
    return "plant"


@pytest.fixture
def fresh_plant(db, request):
    """A collection of its own, for tests that count which documents exams hold out."""
    name = f"plant-{request.node.name[:40]}"
    create_collection(db, name, chunk_tokens=24, chunk_overlap=0)
    add_documents(db, name)
    return name


@pytest.fixture
def clean_queue(db):
    """No job left queued or running by another test: a worker takes the oldest queued job."""
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'cancelled', owner = NULL WHERE status IN ('queued', 'running')"))
    return db


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def exam_rows(db) -> tuple[int, int]:
    with db.engine.connect() as connection:
        return tuple(connection.execute(text("SELECT (SELECT count(*) FROM exams), (SELECT count(*) FROM exam_questions)")).one())


def document_id(db, collection: str, filename: str) -> int:
    return next(d.id for d in list_documents(db, collection) if d.filename == filename)


def chunk_of(db, chunk_id: int) -> tuple[int, str]:
    with db.engine.connect() as connection:
        return tuple(connection.execute(text("SELECT document_id, text FROM chunks WHERE id = :i"), {"i": chunk_id}).one())


# --- import -----------------------------------------------------------------------------------


def test_a_good_jsonl_exam_is_saved_with_each_question_linked_to_its_document_and_chunk(db, plant):
    data = jsonl(
        {"id": "q1", "question": "When does the relief valve of boiler B2 open?", "reference_answer": "At 3.5 bar.",
         "source_document": "Boiler B2.txt", "source_passage": "Test its relief valve every quarter;  IT OPENS at 3.5 bar"},
        {"question": "How often is the seal of pump P-1 replaced?", "answer": "Every 2,000 hours.",
         "source_passage": "“Replace its mechanical seal every 2,000 hours”"},  # no document named: found by its passage
        {"question": "What does fan F-3 cool?", "reference": "The tower.", "source_document": "fan f-3.txt"},
        "",
        {"question": "What is the boiling point of tungsten?", "out_of_scope": True},  # the answer goes without saying
    )
    preview = preview_exam(db, "plant.jsonl", data, collection=plant)
    assert preview.problems == []
    assert preview.notes == ["Ignored fields: 'id'."]
    assert preview.summary == ("plant.jsonl (JSON Lines): 4 valid questions (1 out of scope, 2 linked to a passage of 'plant'), "
                               "no problems.")
    info = save_exam(db, "plant-import", preview)
    assert (info.collection, info.source, info.question_count, info.out_of_scope_count, info.document_count) == (
        plant, "import", 4, 1, 3)
    assert info.settings == {"file": "plant.jsonl", "format": "jsonl", "skipped_rows": 0}

    boiler, pump, fan = get_exam(db, "plant-import").questions[:3]
    assert boiler.document_id == document_id(db, plant, "Boiler B2.txt") and boiler.source_row == 1
    assert chunk_of(db, boiler.chunk_id)[0] == boiler.document_id and "opens at 3.5 bar" in chunk_of(db, boiler.chunk_id)[1]
    assert pump.document_id == document_id(db, plant, "Pump P-1.txt") and "mechanical seal" in chunk_of(db, pump.chunk_id)[1]
    assert (fan.document_id, fan.chunk_id, fan.source_document) == (document_id(db, plant, "Fan F-3.txt"), None, "fan f-3.txt")
    tungsten = get_exam(db, "plant-import").questions[3]
    assert (tungsten.out_of_scope, tungsten.reference_answer, tungsten.source_row) == (True, OUT_OF_SCOPE_ANSWER, 5)


def test_a_csv_exam_with_yes_no_flags(db, plant):
    data = (b"question;answer;source_document;out_of_scope\n"
            b"What does tank T-9 store?;40 cubic metres of caustic soda;Tank T-9.txt;no\n"
            b"Who painted The Night Watch?;The documents do not say.;;YES\n"
            b'"What is drained\nevery shift?";The receiver of compressor C-5;Compressor C-5.txt;0\n')
    preview = preview_exam(db, "plant.csv", data, collection=plant)
    assert preview.problems == [] and preview.file_type == "csv"
    info = save_exam(db, "plant-csv", preview)
    questions = get_exam(db, "plant-csv").questions
    assert [(q.question, q.out_of_scope, q.source_row) for q in questions] == [
        ("What does tank T-9 store?", False, 2), ("Who painted The Night Watch?", True, 3),
        ("What is drained\nevery shift?", False, 4)]
    assert info.document_count == 2 and questions[1].document_id is None


def test_every_bad_row_is_named_and_nothing_is_saved(db, plant):
    before = exam_rows(db)
    data = jsonl(
        {"question": "What opens at 3.5 bar?", "reference_answer": "The relief valve."},
        {"reference_answer": "No question here."},
        {"question": "Which pump moves cooling water?"},
        {"question": "what OPENS at 3.5 bar?", "reference_answer": "Same question, other case."},
        {"question": "What is in the manual?", "reference_answer": "x", "source_document": "Boiler B3.txt"},
        {"question": "What runs at 900 rpm?", "reference_answer": "Fan F-3.", "source_document": "Fan F-3.txt",
         "source_passage": "runs at 1,200 rpm"},
        {"question": "Is it out of scope?", "reference_answer": "Maybe.", "out_of_scope": "maybe"},
        {"question": ["a", "list"], "reference_answer": 42},
        "{not json",
        {"question": "Who won the 1954 World Cup?", "out_of_scope": True, "source_document": "Fan F-3.txt"},
        {"question": "  ", "reference_answer": ""},
        {"question": "Where is the rpm written?", "answer": "Nowhere.", "source_passage": "spins at 3,000 rpm"},
    )
    preview = preview_exam(db, "bad.jsonl", data, collection=plant)
    assert [str(p) for p in preview.problems] == [
        "line 2: missing field 'question'",
        "line 3: missing field 'reference_answer' (or 'answer', 'reference')",
        "line 4: duplicate question (same as line 1, ignoring case)",
        "line 5: unknown source document 'Boiler B3.txt': collection 'plant' has no document of that name "
        "(did you mean 'Boiler B2.txt'?)",
        "line 6: source passage not found in 'Fan F-3.txt' (compared ignoring case and spacing): 'runs at 1,200 rpm'",
        "line 7: 'out_of_scope' must be true or false (or 1/0, yes/no), not 'maybe'",
        "line 8: field 'question' must be text, not a list",
        "line 9: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 10: an out-of-scope question cannot have a source document or passage",
        "line 11: empty question; empty reference answer",
        "line 12: source passage not found in any document of collection 'plant' (compared ignoring case and spacing): "
        "'spins at 3,000 rpm'",
    ]
    assert [q.source_row for q in preview.questions] == [1]
    with pytest.raises(ExamError, match=r"(?s)bad.jsonl: 11 rows cannot be used:\nline 2: missing field 'question'\n.*"
                                        r"\nline 12: source passage not found .*\nFix them and import again"):
        save_exam(db, "bad", preview)
    assert exam_rows(db) == before
    assert "bad" not in {e.name for e in list_exams(db)}
    info = save_exam(db, "bad-but-skipped", preview, skip_bad_rows=True)
    assert info.question_count == 1 and info.settings["skipped_rows"] == 11


def test_whole_file_problems_get_one_message(db, plant, monkeypatch):
    checks = [
        (b"", "bad.jsonl is empty"),
        (jsonl({"prompt": "a", "completion": "b"}), "no 'question' field. Found 'prompt', 'completion'"),
        (b"question,notes\nWhat?,x\n", "bad.csv has no reference answer column"),
    ]
    for data, message in checks:
        name = "bad.csv" if data.startswith(b"question,") else "bad.jsonl"
        with pytest.raises(ExamError, match=message):
            preview_exam(db, name, data, collection=plant)
    monkeypatch.setattr("core.evaluation.exams.MAX_EXAM_BYTES", 100)
    with pytest.raises(ExamError, match="big.jsonl is 101 B; exam files are at most 100 B"):
        preview_exam(db, "big.jsonl", b"x" * 101, collection=plant)


def test_a_passage_across_two_chunks_links_the_chunk_holding_most_of_it(db, fresh_plant):
    boiler = document_id(db, fresh_plant, "Boiler B2.txt")
    chunks = document_chunks(db, boiler)
    assert len(chunks) >= 2, [c.text for c in chunks]
    first, second = chunks[0], chunks[1]
    mostly_second = f"{first.text[-6:]} {second.text[:40]}"
    mostly_first = f"{first.text[-40:]} {second.text[:6]}"
    data = jsonl({"question": "Which chunk, the second?", "answer": "x", "source_document": "Boiler B2.txt",
                  "source_passage": mostly_second},
                 {"question": "Which chunk, the first?", "answer": "x", "source_document": "Boiler B2.txt",
                  "source_passage": mostly_first})
    save_exam(db, "across", preview_exam(db, "across.jsonl", data, collection=fresh_plant))
    assert [q.chunk_id for q in get_exam(db, "across").questions] == [second.id, first.id]


def test_names_are_checked_and_a_taken_name_saves_nothing(db, plant):
    preview = preview_exam(db, "x.jsonl", jsonl({"question": "What stores caustic soda?", "answer": "Tank T-9."}),
                           collection=plant)
    save_exam(db, "taken-exam", preview)
    before = exam_rows(db)
    for name, message in (("taken-exam", "An exam named 'taken-exam' already exists"), ("  ", "An exam needs a name"),
                          ("x" * 101, "at most 100 characters")):
        with pytest.raises(ExamError, match=message):
            save_exam(db, name, preview)
    assert exam_rows(db) == before


# --- reading, editing, export, delete ---------------------------------------------------------


def test_questions_are_edited_in_one_transaction_and_export_round_trips(db, plant):
    data = jsonl(*({"question": q, "answer": a} for q, a in [("First question?", "one"), ("Second question?", "two"),
                                                             ("Third question?", "three")]))
    save_exam(db, "editable", preview_exam(db, "e.jsonl", data, collection=plant))
    first, second, third = get_exam(db, "editable").questions
    edited = update_question(db, first.id, question="The first question, better worded?", out_of_scope=True)
    assert (edited.question, edited.reference_answer, edited.out_of_scope) == ("The first question, better worded?", "one", True)
    with pytest.raises(ExamError, match="question #2 asks the same as #3"):
        update_question(db, second.id, question="THIRD question?")
    with pytest.raises(ExamError, match="the reference answer cannot be empty"):
        update_question(db, second.id, reference_answer="  ")
    # two questions swap texts, another is deleted: all at once or not at all
    with pytest.raises(ExamError, match="question #2: the question cannot be empty"):
        save_question_edits(db, "editable", [{"id": second.id, "question": ""}, {"id": third.id, "delete": True}])
    assert len(get_exam(db, "editable").questions) == 3
    assert save_question_edits(db, "editable", [
        {"id": first.id, "question": "The first question, better worded?", "reference_answer": "one", "out_of_scope": True},
        {"id": second.id, "question": "Third question?"}, {"id": third.id, "question": "Second question?"},
    ]) == (2, 0)
    assert [q.question for q in get_exam(db, "editable").questions] == [
        "The first question, better worded?", "Third question?", "Second question?"]
    delete_question(db, second.id)
    with pytest.raises(ExamError, match=f"No exam question with id {second.id}"):
        delete_question(db, second.id)

    exported = export_exam(db, "editable")
    assert [json.loads(line)["question"] for line in exported.splitlines()] == ["The first question, better worded?",
                                                                                "Second question?"]
    again = preview_exam(db, "editable.jsonl", exported.encode(), collection=plant)
    assert again.problems == [] and [(q.question, q.out_of_scope) for q in again.questions] == [
        ("The first question, better worded?", True), ("Second question?", False)]
    assert delete_exam(db, "editable") == 2
    with pytest.raises(ExamError, match="No exam named 'editable'"):
        get_exam(db, "editable")


# --- generation -------------------------------------------------------------------------------


def scripted_batch(conversations, **settings):
    """Stands in for generate_batch: a question about each chunk's first words, answered by them."""
    answers = []
    for messages in conversations:
        body = messages[-1]["content"].split("\n", 1)[1]  # "Text:\n<chunk>"
        words = " ".join(body.split()[:6])
        answers.append(BatchAnswer(f"Question: What does the passage '{words}' say?\nAnswer: {words}.", 10, 10, 0.1, 0.1,
                                   "end of turn"))
    return answers


def test_generation_asks_about_held_out_documents_only(db, fresh_plant, tiny_llama, monkeypatch):
    monkeypatch.setattr(core.models.batch, "generate_batch", lambda loaded, conversations, **kw: scripted_batch(conversations))
    fractions = []
    report = generate_exam(db, "drafted", fresh_plant, model_id=tiny_llama, heldout_fraction=0.34, questions=50,
                           out_of_scope=3, seed=7, batch_size=2, progress=fractions.append)
    heldout = choose_heldout_documents(db, fresh_plant, fraction=0.34, seed=7)
    assert [d.id for d in report.heldout] == [d.id for d in heldout] and len(heldout) == 2  # 0.34 × 6 documents
    held = {d.id for d in heldout}
    held_chunks = [c for d in heldout for c in document_chunks(db, d.id)]
    exam = get_exam(db, "drafted")
    in_scope = [q for q in exam.questions if not q.out_of_scope]
    assert report.chunks == report.questions == len(in_scope) == len(held_chunks)
    assert {q.chunk_id for q in in_scope} == {c.id for c in held_chunks}
    for question in in_scope:
        document, chunk_text = chunk_of(db, question.chunk_id)
        assert question.document_id == document and document in held and question.source_passage == chunk_text
    assert [(q.reference_answer, q.document_id) for q in exam.questions if q.out_of_scope] == [(OUT_OF_SCOPE_ANSWER, None)] * 3
    assert exam.info.source == "generated" and exam.info.settings["seed"] == 7
    assert exam.info.settings["heldout_documents"] == [{"id": d.id, "filename": d.filename} for d in heldout]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert exam_document_ids(db, collection_id(db, fresh_plant)) == held
    # another seed holds out other documents; explicit documents are taken as given
    drawn = {frozenset(d.id for d in choose_heldout_documents(db, fresh_plant, fraction=0.34, seed=seed)) for seed in range(8)}
    assert held in drawn and len(drawn) > 2
    named = choose_heldout_documents(db, fresh_plant, documents=["Tank T-9.txt", document_id(db, fresh_plant, "Fan F-3.txt")])
    assert [d.filename for d in named] == ["Fan F-3.txt", "Tank T-9.txt"]
    with pytest.raises(ExamError, match="has no document 'Tank T-10.txt' to hold out"):
        choose_heldout_documents(db, fresh_plant, documents=["Tank T-10.txt"])


def collection_id(db, name: str) -> int:
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT id FROM collections WHERE name = :n"), {"n": name}).scalar_one()


def test_a_model_that_writes_no_question_saves_no_exam(db, plant, tiny_llama):
    before = exam_rows(db)
    with pytest.raises(ExamError) as error:
        generate_exam(db, "junk", plant, model_id=tiny_llama, questions=2, max_new_tokens=16)
    assert f"{tiny_llama} wrote no usable question from the 2 chunks it read" in str(error.value)
    assert NO_PAIR in str(error.value) and "so no exam was saved" in str(error.value)
    assert exam_rows(db) == before


def build_scripted_model(folder, reply: str) -> str:
    """A real Llama whose greedy reply to any prompt is `reply`: every token's embedding is its own
    axis, attention and MLP add nothing, and the output layer maps each word of the reply to the next
    (the last one, and anything else, to end of text). A job's own process loads it like any model."""
    import torch
    from tiny_models import CHATML
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = reply.split()
    assert len(set(words)) == len(words), "each word once: the next word depends on this one alone"
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(special + ["system", "user", "assistant"] + words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=special[4:], model_max_length=4096)
    tokenizer.chat_template = CHATML
    size = 32
    assert len(vocab) <= size
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vocab), hidden_size=size, intermediate_size=size, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"], tie_word_embeddings=False))
    chain = ["assistant", *words]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), size))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(len(vocab), size)
        head[vocab["</s>"], : len(vocab)] = 1.0
        for current, following in zip(chain, chain[1:], strict=False):
            head[vocab[following], vocab[current]] = 10.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory) -> str:
    return build_scripted_model(tmp_path_factory.mktemp("scripted"),
                                "Question: Which part opens at 3.5 bar? Answer: The relief valve of B2.")


def test_a_generate_exam_job_runs_through_the_worker(db, fresh_plant, scripted_model, clean_queue):
    job = submit_generate_exam(db, name="job-exam", collection=fresh_plant, model_id=scripted_model, questions=3, out_of_scope=2,
                               seed=1)
    assert job.kind == "generate-exam" and job.status == "queued"
    (held,) = job.params["heldout_document_ids"]  # 0.2 × 6 documents: 1, fixed when queued
    chunks = min(3, len(document_chunks(db, held)))
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([f"{job.status}: {job.error}", *job_log_tail(db, job.id, 40)])
    exam = get_exam(db, "job-exam")
    # the scripted model asks the same question about every chunk: the first is kept, the others dropped
    (question, *out_of_scope) = exam.questions
    assert (question.question, question.reference_answer) == ("Which part opens at 3.5 bar?", "The relief valve of B2.")
    assert question.document_id == held == chunk_of(db, question.chunk_id)[0]
    assert [(q.out_of_scope, q.reference_answer) for q in out_of_scope] == [(True, OUT_OF_SCOPE_ANSWER)] * 2
    assert job.result["questions"] == 1 and job.result["out_of_scope"] == 2
    assert job.result["chunks"] == chunks and job.result["dropped"] == {DUPLICATE: chunks - 1}
    assert job.result["heldout_documents"] == [exam.info.settings["heldout_documents"][0]["filename"]]
    assert exam.info.settings["job"] == job.id and exam.info.settings["model"] == scripted_model
    assert job.progress["done"] == 100
    assert any(f"Exam 'job-exam': 1 question from {chunks} chunks of 1 held-out document" in line
               for line in job_log_tail(db, job.id, 40))


def test_generation_is_checked_before_anything_is_queued(db, plant, collection, tiny_llama, clean_queue):
    save_exam(db, "taken-by-import", preview_exam(db, "t.jsonl", jsonl({"question": "Who?", "answer": "x"}), collection=plant))
    queued = submit_generate_exam(db, name="queued-exam", collection=plant, model_id=tiny_llama)
    checks = [
        (dict(name="taken-by-import"), "An exam named 'taken-by-import' already exists"),
        (dict(name="queued-exam"), f"Job {queued.id} is already working on 'queued-exam'"),
        (dict(heldout_fraction=1.0), "held-out fraction is a share"),
        (dict(questions=0), "at least 1 question"),
        (dict(out_of_scope=21), "Out-of-scope questions: 0 to 20"),
        (dict(max_new_tokens=8), "at least 16 new tokens"),
        (dict(collection=collection), "has no documents yet"),
        (dict(collection="nope"), "No collection named 'nope'"),
        (dict(heldout_documents=["Nope.txt"]), "has no document 'Nope.txt' to hold out"),
        (dict(model_id="/no/such/model"), "not a model folder"),
    ]
    for arguments, message in checks:
        with pytest.raises(UserError, match=message):
            submit_generate_exam(db, **{"name": "fresh", "collection": plant, "model_id": tiny_llama, **arguments})
    cancel_job(db, queued.id)


# --- leakage ----------------------------------------------------------------------------------


def test_training_data_generation_leaves_exam_documents_out(db, fresh_plant):
    all_chunks = sum(len(document_chunks(db, d.id)) for d in list_documents(db, fresh_plant))
    boiler = document_id(db, fresh_plant, "Boiler B2.txt")
    data = jsonl({"question": "When does the relief valve open?", "answer": "At 3.5 bar.", "source_document": "Boiler B2.txt",
                  "source_passage": "it opens at 3.5 bar"})
    save_exam(db, "boiler-exam", preview_exam(db, "b.jsonl", data, collection=fresh_plant))
    assert exam_document_ids(db, collection_id(db, fresh_plant)) == {boiler}

    info = generate_text_dataset(db, f"{fresh_plant}-text", fresh_plant)
    excluded = len(document_chunks(db, boiler))
    assert info.example_count == all_chunks - excluded
    assert boiler not in {e.document_id for e in list_examples(db, info.name, limit=1000)}
    assert info.source.endswith(f"({excluded} chunks of exam documents left out)")
    everything = generate_text_dataset(db, f"{fresh_plant}-all", fresh_plant, exclude_document_ids=[])
    assert everything.example_count == all_chunks
    with pytest.raises(DatasetError, match=f"Every document of collection '{fresh_plant}' is held out for an exam"):
        generate_text_dataset(db, f"{fresh_plant}-none", fresh_plant,
                              exclude_document_ids=[d.id for d in list_documents(db, fresh_plant)])


def make_dataset(db, name: str, rows: list[tuple[str, str, int | None]]) -> str:
    """A chat training set written straight into the tables: (question, answer, document id)."""
    with db.engine.begin() as connection:
        dataset_id = connection.execute(text("INSERT INTO datasets (name, kind, source) VALUES (:n, 'chat', 'test') RETURNING id"),
                                        {"n": name}).scalar_one()
        for ordinal, (question, answer, document) in enumerate(rows):
            connection.execute(
                text("INSERT INTO training_examples (dataset_id, ordinal, split, messages, document_id) "
                     "VALUES (:d, :o, 'train', CAST(:m AS jsonb), :doc)"),
                {"d": dataset_id, "o": ordinal, "doc": document,
                 "m": json.dumps([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])})
    return name


def make_adapter(db, folder, name: str, dataset: str | None) -> str:
    """An adapter as a fine-tuning job publishes it: its training record names the dataset."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights of " + name.encode())
    if dataset:
        (folder / "training.json").write_text(json.dumps({"dataset": dataset, "base_model": "tiny", "metrics": {}}))
    from core.models.adapters import import_adapter

    import_adapter(db, folder, name)
    return name


def test_an_adapter_trained_on_the_exams_documents_or_questions_is_refused(db, fresh_plant, tmp_path):
    data = jsonl({"question": "When does the relief valve open?", "answer": "At 3.5 bar.", "source_document": "Boiler B2.txt"},
                 {"question": "What does pump P-1 move?", "answer": "Cooling water.", "source_document": "Pump P-1.txt"})
    save_exam(db, "leak-exam", preview_exam(db, "l.jsonl", data, collection=fresh_plant))
    boiler, pump, fan = (document_id(db, fresh_plant, f"{n}.txt") for n in ("Boiler B2", "Pump P-1", "Fan F-3"))
    make_dataset(db, "leaky-docs", [("Q1?", "a", boiler), ("Q2?", "b", boiler), ("Q3?", "c", pump), ("Q4?", "d", fan)])
    make_dataset(db, "leaky-question", [("what does  PUMP p-1 move?", "Cooling water.", None), ("Other?", "x", fan)])
    # a RAFT example asks the question after its passages (core.answers.rag.rag_messages)
    make_dataset(db, "leaky-raft", [("Sources:\n\n[1] Fan F-3.txt\nThe fan cools the tower.\n\nQuestion: When does the "
                                     "relief valve  open?", "At 3.5 bar.", fan)])
    make_dataset(db, "clean", [("What does fan F-3 cool?", "The tower.", fan), ("Imported?", "yes", None),
                               ("Sources:\n\n[1] Fan F-3.txt\nWhen does the relief valve open?\n\nQuestion: Why?", "x", fan)])
    make_adapter(db, tmp_path / "a", "on-exam-docs", "leaky-docs")
    make_adapter(db, tmp_path / "r", "on-exam-raft", "leaky-raft")
    make_adapter(db, tmp_path / "b", "on-exam-question", "leaky-question")
    make_adapter(db, tmp_path / "c", "clean-adapter", "clean")
    make_adapter(db, tmp_path / "d", "from-elsewhere", None)

    with pytest.raises(ExamError) as error:
        check_no_leakage(db, "leak-exam", "on-exam-docs")
    assert str(error.value).startswith(
        "Adapter 'on-exam-docs' cannot be evaluated on exam 'leak-exam': its training set 'leaky-docs' overlaps the exam — "
        "3 training examples come from 2 documents the exam asks about ('Boiler B2.txt', 'Pump P-1.txt').")
    with pytest.raises(ExamError, match=r"1 training example asks an exam question \(e.g. 'What does pump P-1 move\?'\)"):
        check_no_leakage(db, "leak-exam", "on-exam-question")
    with pytest.raises(ExamError, match=r"1 training example asks an exam question \(e.g. 'When does the relief valve open\?'\)"):
        check_no_leakage(db, "leak-exam", "on-exam-raft")
    accepted = check_no_leakage(db, "leak-exam", "clean-adapter")  # an exam question inside a passage is not asked
    assert (accepted.verified, accepted.dataset, accepted.examples_checked) == (True, "clean", 3)
    unverified = check_no_leakage(db, "leak-exam", "from-elsewhere")
    assert not unverified.verified and "has no training record" in unverified.note
    # a training set made again under the same name after the adapter was trained cannot vouch for it
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM datasets WHERE name = 'clean'"))
    make_dataset(db, "clean", [("Anything?", "x", fan)])
    assert "was made again after the adapter was trained" in check_no_leakage(db, "leak-exam", "clean-adapter").note
    with pytest.raises(ExamError, match="No exam named 'nope'"):
        check_no_leakage(db, "nope", "clean-adapter")


# --- the command line -------------------------------------------------------------------------


def test_cli_imports_lists_shows_exports_and_deletes(db, plant, tmp_path, capsys):
    assert main(["exams", "import", str(tmp_path / "missing.jsonl"), "--name", "cli", "--collection", plant]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.jsonl: no such file" in err

    path = tmp_path / "exam.jsonl"
    path.write_bytes(jsonl({"question": "What does valve V-7 need once a year?", "answer": "Full exercise.",
                            "source_document": "Valve V-7.txt"}, {"question": "Bad row"}))
    assert main(["exams", "import", str(path), "--name", "cli-exam", "--collection", plant]) == 2
    captured = capsys.readouterr()
    assert "line 2: missing field 'reference_answer'" in captured.err and "Nothing saved" in captured.err
    assert main(["exams", "import", str(path), "--name", "cli-exam", "--collection", plant, "--skip-bad-rows"]) == 0
    assert "Saved exam 'cli-exam': 1 question." in capsys.readouterr().out
    assert main(["exams", "list", "--json"]) == 0
    assert "cli-exam" in {e["name"] for e in json.loads(capsys.readouterr().out)}
    assert main(["exams", "show", "cli-exam", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["questions"][0]["source_document"] == "Valve V-7.txt" and shown["question_count"] == 1
    assert main(["exams", "export", "cli-exam", "--output", str(tmp_path / "out.jsonl")]) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["question"] == "What does valve V-7 need once a year?"
    capsys.readouterr()
    assert main(["exams", "delete", "cli-exam"]) == 2
    assert "Add --yes to confirm" in capsys.readouterr().err
    assert main(["exams", "delete", "cli-exam", "--yes"]) == 0
    assert main(["exams", "show", "cli-exam"]) == 2
    assert capsys.readouterr().err.startswith("error: No exam named 'cli-exam'.")


def test_cli_queues_a_generation_without_waiting(db, plant, tiny_llama, capsys, clean_queue):
    assert main(["exams", "generate", "--collection", plant, "--model", tiny_llama, "--out-of-scope", "2", "--no-wait",
                 "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["kind"] == "generate-exam" and queued["params"]["exam_name"] == f"{plant}-exam"
    assert queued["params"]["out_of_scope"] == 2
    cancel_job(db, queued["id"])
    assert main(["exams", "generate", "--collection", plant, "--heldout-fraction", "0"]) == 2
    assert "held-out fraction" in capsys.readouterr().err


# --- the Exams page ---------------------------------------------------------------------------


def open_exams(tab: str) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.session_state["exams_tab"] = tab
    at.switch_page("pages/exams.py").run()
    assert not at.exception
    return at


def test_the_exams_page_previews_saves_lists_and_deletes(db, plant):
    at = open_exams("Import a file")
    at.selectbox(key="exam_import_collection").select(plant).run()
    data = jsonl({"question": "What does fan F-3 run at?", "answer": "900 rpm.", "source_document": "Fan F-3.txt",
                  "source_passage": "runs at 900 rpm"},
                 {"question": "Unknown document?", "answer": "x", "source_document": "Fan F-4.txt"})
    at.file_uploader(key="exam_file").set_value(("page-exam.jsonl", data, "application/json")).run()
    assert not at.exception
    assert any("1 valid question" in m.value for m in at.markdown)
    assert "line 2: unknown source document 'Fan F-4.txt'" in at.warning[0].value
    at.checkbox(key="exam_skip").check()
    at.button(key="exam_save").click().run()
    assert not at.exception and not at.error
    assert [s.value for s in at.success] == ["Saved exam 'page-exam': 1 question (0 out of scope)."]

    at = open_exams("Browse and edit")
    at.selectbox(key="exam_browse").select("page-exam").run()
    assert not at.exception
    assert "page-exam" in list(at.dataframe[0].value["name"])
    at.button(key="exam_delete").click().run()
    assert not at.exception
    assert "page-exam" not in {e.name for e in list_exams(db)}


@pytest.fixture
def tiny_default_model(tiny_llama, monkeypatch):
    """The tiny model as the configured language model (the page's default choice), for one test."""
    from core.config import get_settings

    monkeypatch.setenv("EXPERT_STUDIO_LANGUAGE_MODEL", tiny_llama)
    get_settings.cache_clear()
    yield tiny_llama
    monkeypatch.undo()
    get_settings.cache_clear()


def test_the_generate_tab_starts_a_job_and_shows_it(db, plant, tiny_default_model, clean_queue, monkeypatch):
    monkeypatch.setattr("core.ui.tracked_jobs.ensure_local_worker", lambda db: None)  # the test runs no worker here
    at = open_exams("Generate from documents")
    at.selectbox(key="exam_gen_collection").select(plant).run()
    at.text_input(key="exam_gen_name").set_value("page-drafted")
    at.button(key="exam_generate").click().run()
    assert not at.exception and not at.error
    job = next(j for j in clean_queue_jobs(db) if j.params["exam_name"] == "page-drafted")
    assert at.get("progress"), "the job view shows the job's progress"
    cancel_job(db, job.id)


def clean_queue_jobs(db):
    from core.jobs.queue import list_jobs

    return list_jobs(db, kind="generate-exam")
