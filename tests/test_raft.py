"""RAFT training data on the real database: a generated-style Q/A dataset (each pair linked to its
chunk) becomes questions asked in the RAG prompt of core.answers.rag, the source passage among
distractors, the answer citing it; then the same as a job through the real worker, the CLI and the
Training data page."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from training_helpers import wait_for

from core.answers.rag import Source, rag_messages
from core.cli import main
from core.datasets import DatasetError, build_raft_dataset, get_dataset, list_datasets, list_examples
from core.datasets.generation_job import submit_generate_dataset
from core.datasets.raft import EXAM_SOURCE, NO_SOURCE, OTHER_COLLECTION
from core.datasets.store import NewExample, write_dataset
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection, document_chunks, get_collection, list_documents
from core.jobs.queue import get_job, job_log_tail, list_jobs
from core.jobs.worker import run_worker

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


def passages(db, collection: str) -> dict[int, dict]:
    """chunk id → what a Source needs (document, file name, page, heading, text)."""
    return {c.id: {"chunk_id": c.id, "document_id": d.id, "filename": d.filename, "page": c.page, "heading": c.heading,
                   "text": c.text}
            for d in list_documents(db, collection) for c in document_chunks(db, d.id)}


def qa_pairs(db, collection: str) -> dict[int, tuple[str, str]]:
    """chunk id → (question, answer): one pair per chunk, the answer its first line."""
    return {p["chunk_id"]: (f"What does the manual say about {' '.join(p['text'].split()[:4])}?", p["text"].split("\n")[0])
            for p in passages(db, collection).values()}


def qa_dataset(db, name: str, collection: str, *, linked: bool = True) -> dict[int, tuple[str, str]]:
    """A question/answer dataset as generate_qa_dataset saves it (each pair with its chunk and
    document), or (linked=False) as an imported file does. Returns its pairs by chunk id."""
    pairs, chunks = qa_pairs(db, collection), passages(db, collection)
    examples = [NewExample(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                           document_id=chunks[chunk]["document_id"] if linked else None, chunk_id=chunk if linked else None)
                for chunk, (q, a) in pairs.items()]
    write_dataset(db, name, kind="chat", source="test pairs", examples=examples,
                  collection_id=get_collection(db, collection).id if linked else None)
    return pairs


@pytest.fixture(scope="module")
def plant(db):
    """Six documents of two or three small chunks each, and a Q/A dataset with one pair per chunk."""
    create_collection(db, "plant", chunk_tokens=24, chunk_overlap=0)
    add_documents(db, "plant")
    qa_dataset(db, "plant-qa", "plant")
    return "plant"


def shown(content: str, chunks: dict[int, dict]) -> list[int]:
    """The chunks whose text a prompt shows, in the order it shows them."""
    found = {chunk_id: content.find(c["text"]) for chunk_id, c in chunks.items() if c["text"] in content}
    inside_another = {a for a in found for b in found if a != b and chunks[a]["text"] in chunks[b]["text"]}
    return sorted((c for c in found if c not in inside_another), key=found.get)


def check_example(example, chunks: dict[int, dict], pairs: dict[int, tuple[str, str]], distractors: int) -> bool:
    """Asserts the example is rag_messages' prompt of the right passages and the answer cites the
    source; returns whether the source is among the passages."""
    question, answer = pairs[example.chunk_id]
    *prompt, reply = example.messages
    order = shown(prompt[-1]["content"], chunks)
    oracle = example.chunk_id in order
    assert len(order) == distractors + (1 if oracle else 0)
    sources = [Source(number=n, score=0.0, similarity=None, **chunks[c]) for n, c in enumerate(order, start=1)]
    assert prompt == rag_messages(question, sources)  # exactly the prompt the app builds at answer time
    assert reply["role"] == "assistant"
    assert reply["content"] == (f"{answer} [{order.index(example.chunk_id) + 1}]" if oracle else answer)
    assert example.document_id == chunks[example.chunk_id]["document_id"]
    return oracle


def test_each_example_is_the_rag_prompt_with_its_source_among_distractors(db, plant, tiny_llama):
    pairs = qa_dataset(db, "plant-qa-again", plant)
    report = build_raft_dataset(db, "plant-raft", from_dataset="plant-qa-again", collection=plant, distractors=3,
                                oracle_fraction=0.8, seed=0, model_id=tiny_llama)
    chunks = passages(db, plant)
    examples = list_examples(db, "plant-raft", limit=1000)
    assert len(examples) == len(pairs) == report.examples
    oracles = [check_example(e, chunks, pairs, 3) for e in examples]
    assert sum(oracles) == report.with_source == round(0.8 * len(pairs))  # seeded: an exact count
    assert report.without_source == len(pairs) - report.with_source > 0
    assert report.distractors == 3 * len(pairs) and report.hard_negatives > 0 and report.left_out == {}
    assert 0 < report.longest <= 512 - 16
    positions = {shown(e.messages[-2]["content"], chunks).index(e.chunk_id) for e in examples if e.chunk_id in
                 shown(e.messages[-2]["content"], chunks)}
    assert len(positions) > 1, "the source is shuffled among the passages, not always first"
    info = get_dataset(db, "plant-raft")
    assert info.kind == "chat" and info.collection == plant and info.source.startswith("RAFT from 'plant-qa-again' in 'plant'")
    assert report.message.startswith(f"{len(pairs)} RAFT examples from 'plant-qa-again' saved as 'plant-raft'")


def test_the_split_is_by_document_and_the_same_seed_gives_the_same_examples(db, plant, tiny_llama):
    build_raft_dataset(db, "raft-seed-a", from_dataset="plant-qa", collection=plant, seed=7, model_id=tiny_llama)
    build_raft_dataset(db, "raft-seed-b", from_dataset="plant-qa", collection=plant, seed=7, model_id=tiny_llama)
    a, b = (list_examples(db, name, limit=1000) for name in ("raft-seed-a", "raft-seed-b"))
    assert [(e.messages, e.split) for e in a] == [(e.messages, e.split) for e in b]
    train = {e.document_id for e in a if e.split == "train"}
    validation = {e.document_id for e in a if e.split == "validation"}
    assert train and validation and not train & validation


def test_distractors_are_dropped_until_an_example_fits(db, plant, tiny_llama):
    pairs = qa_dataset(db, "plant-qa-fit", plant)
    roomy = build_raft_dataset(db, "raft-roomy", from_dataset="plant-qa-fit", collection=plant, distractors=4,
                               oracle_fraction=1.0, model_id=tiny_llama)
    limit = roomy.longest - 30
    tight = build_raft_dataset(db, "raft-tight", from_dataset="plant-qa-fit", collection=plant, distractors=4,
                               oracle_fraction=1.0, model_id=tiny_llama, max_tokens=limit)
    assert roomy.distractors == 4 * len(pairs) and tight.distractors < roomy.distractors
    assert tight.longest <= limit and tight.with_source == len(pairs)
    chunks = passages(db, plant)
    for example in list_examples(db, "raft-tight", limit=1000):
        order = shown(example.messages[-2]["content"], chunks)
        assert example.chunk_id in order and 1 <= len(order) <= 5  # the source is never the one dropped


def test_exam_documents_feed_neither_sources_nor_distractors(db, plant, tiny_llama):
    chunks = passages(db, plant)
    held_out = {d.id for d in list_documents(db, plant) if d.filename in ("Pump P-1.txt", "Fan F-3.txt")}
    held_chunks = {c for c, p in chunks.items() if p["document_id"] in held_out}
    report = build_raft_dataset(db, "raft-no-exam", from_dataset="plant-qa", collection=plant, model_id=tiny_llama,
                                exclude_document_ids=held_out)
    assert report.left_out == {EXAM_SOURCE: len(held_chunks)} and report.excluded_chunks == len(held_chunks)
    for example in list_examples(db, "raft-no-exam", limit=1000):
        assert example.document_id not in held_out
        assert not set(shown(example.messages[-2]["content"], chunks)) & held_chunks


def test_an_exam_of_the_collection_keeps_its_documents_out_by_default(db, tiny_llama):
    from core.evaluation.exams import NewQuestion, write_exam

    create_collection(db, "examined", chunk_tokens=24, chunk_overlap=0)
    add_documents(db, "examined")
    qa_dataset(db, "examined-qa", "examined")  # written before the exam, as a user might
    boiler = next(d for d in list_documents(db, "examined") if d.filename == "Boiler B2.txt")
    write_exam(db, "examined-exam", source="generated", collection_id=get_collection(db, "examined").id, settings={},
               questions=[NewQuestion("When does the relief valve of B2 open?", "At 3.5 bar.", document_id=boiler.id)])
    chunks = passages(db, "examined")
    boiler_chunks = {c for c, p in chunks.items() if p["document_id"] == boiler.id}
    report = build_raft_dataset(db, "examined-raft", from_dataset="examined-qa", collection="examined", model_id=tiny_llama)
    assert report.left_out == {EXAM_SOURCE: len(boiler_chunks)} and report.excluded_chunks == len(boiler_chunks)
    for example in list_examples(db, "examined-raft", limit=1000):
        assert example.document_id != boiler.id and not set(shown(example.messages[-2]["content"], chunks)) & boiler_chunks


def test_a_dataset_without_passages_is_refused_and_nothing_is_saved(db, plant, tiny_llama):
    qa_dataset(db, "imported-qa", plant, linked=False)
    before = len(list_datasets(db))
    with pytest.raises(DatasetError, match=r"None of the \d+ examples of 'imported-qa' is linked to the passage"):
        build_raft_dataset(db, "raft-imported", from_dataset="imported-qa", collection=plant, model_id=tiny_llama)
    with pytest.raises(DatasetError, match="A dataset named 'plant-qa' already exists"):
        build_raft_dataset(db, "plant-qa", from_dataset="plant-qa", collection=plant, model_id=tiny_llama)
    with pytest.raises(DatasetError, match="No dataset named 'no-such-qa'"):
        build_raft_dataset(db, "raft-x", from_dataset="no-such-qa", collection=plant, model_id=tiny_llama)
    with pytest.raises(DatasetError, match="at least 1 distractor, or an oracle fraction of 1"):
        build_raft_dataset(db, "raft-x", from_dataset="plant-qa", collection=plant, distractors=0, model_id=tiny_llama)
    with pytest.raises(DatasetError, match="between 0 and 1"):
        build_raft_dataset(db, "raft-x", from_dataset="plant-qa", collection=plant, oracle_fraction=1.5, model_id=tiny_llama)
    create_collection(db, "elsewhere", chunk_tokens=24, chunk_overlap=0)
    add_documents(db, "elsewhere", EQUIPMENT[:2])
    with pytest.raises(DatasetError, match=f"No example of 'plant-qa' can be used with collection 'elsewhere'.*{OTHER_COLLECTION}"):
        build_raft_dataset(db, "raft-x", from_dataset="plant-qa", collection="elsewhere", model_id=tiny_llama)
    assert len(list_datasets(db)) == before


def test_examples_without_a_passage_are_left_out_and_counted(db, plant, tiny_llama):
    pairs = qa_dataset(db, "half-linked", plant)
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE training_examples SET chunk_id = NULL, document_id = NULL WHERE ordinal < 3 AND "
                                "dataset_id = (SELECT id FROM datasets WHERE name = 'half-linked')"))
    report = build_raft_dataset(db, "raft-half", from_dataset="half-linked", collection=plant, model_id=tiny_llama)
    assert report.left_out == {NO_SOURCE: 3} and report.examples == len(pairs) - 3
    assert "Left out 3 examples without a source passage" in report.message


# --- the job, the CLI, the page ---------------------------------------------------------------


@pytest.fixture
def clean_queue(db):
    """No job left queued or running by another test: a worker takes the oldest queued job."""
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'cancelled', owner = NULL WHERE status IN ('queued', 'running')"))
    return db


def failure(db, job_id: int) -> str:
    job = get_job(db, job_id)
    return "\n".join([f"{job.status}: {job.error}", *job_log_tail(db, job_id, 30)])


def test_a_raft_job_runs_in_the_worker_and_names_the_dataset(db, plant, tiny_llama, clean_queue):
    job = submit_generate_dataset(db, name="raft-job", collection=plant, kind="raft", from_dataset="plant-qa",
                                  model_id=tiny_llama, distractors=2, oracle_fraction=0.5)
    assert job.kind == "generate-dataset" and job.params["from_dataset"] == "plant-qa"
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", failure(db, job.id)
    info = get_dataset(db, "raft-job")
    assert job.result["dataset"] == "raft-job" and job.result["examples"] == info.example_count
    assert job.result["with_source"] == round(0.5 * info.example_count)
    assert job.result["message"].startswith(f"{info.example_count} RAFT examples from 'plant-qa' saved as 'raft-job'")
    chunks = passages(db, plant)
    oracles = [check_example(e, chunks, qa_pairs(db, plant), 2) for e in list_examples(db, "raft-job", limit=1000)]
    assert sum(oracles) == job.result["with_source"]
    assert "Generating RAFT examples from dataset 'plant-qa' from collection 'plant'" in "\n".join(job_log_tail(db, job.id, 50))


def test_a_raft_job_is_checked_before_it_is_queued(db, plant, tiny_llama, clean_queue):
    qa_dataset(db, "imported-for-job", plant, linked=False)
    before = len(list_jobs(db, 1000))
    for arguments, message in [
        ({}, "name it"),
        ({"from_dataset": "imported-for-job"}, "is linked to the passage"),
        ({"from_dataset": "plant-qa", "distractors": 50}, "Use 0 to 20 distractor"),
        ({"from_dataset": "plant-qa", "model_id": "/no/such/model"}, "not a model folder"),
    ]:
        with pytest.raises(Exception, match=message):
            submit_generate_dataset(db, name="raft-refused", collection=plant, kind="raft", **{"model_id": tiny_llama, **arguments})
    assert len(list_jobs(db, 1000)) == before


def test_cli_queues_a_raft_generation(db, plant, tiny_llama, capsys, clean_queue):
    assert main(["datasets", "generate", "--kind", "raft", "--from", "plant-qa", "--collection", plant, "--name", "raft-cli",
                 "--distractors", "1", "--oracle-fraction", "1", "--model", tiny_llama, "--no-wait", "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["kind"] == "generate-dataset" and queued["params"]["distractors"] == 1
    run_worker(db, once=True)
    assert get_job(db, queued["id"]).status == "succeeded", failure(db, queued["id"])
    examples = list_examples(db, "raft-cli", limit=1000)
    chunks = passages(db, plant)
    assert examples and all(len(shown(e.messages[-2]["content"], chunks)) == 2 for e in examples)
    assert main(["datasets", "generate", "--kind", "raft", "--collection", plant, "--name", "raft-cli-2", "--model", tiny_llama]) == 2
    assert "name it (--from)" in capsys.readouterr().err


@pytest.fixture
def tiny_default_model(tiny_llama):
    """The tiny model as the configured language model (the page measures with the configured one)."""
    from core.config import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXPERT_STUDIO_LANGUAGE_MODEL", tiny_llama)
        get_settings.cache_clear()
        yield tiny_llama
    get_settings.cache_clear()


def test_the_training_data_page_generates_raft_from_a_chosen_dataset(db, plant, tiny_default_model, clean_queue, stop_workers):
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.session_state["training_data_tab"] = "Generate from documents"
    at.switch_page("pages/training_data.py").run()
    at.selectbox(key="td_collection").select(plant)
    at.radio(key="td_kind").set_value("RAFT (question + source among distractors)").run()
    assert not at.exception
    assert "plant-qa" in at.selectbox(key="td_raft_from").options
    at.selectbox(key="td_raft_from").select("plant-qa")
    at.number_input(key="td_raft_distractors").set_value(2)
    assert at.text_input(key="td_generate_name").value == "plant-raft"
    at.text_input(key="td_generate_name").set_value("page-raft")
    at.button(key="td_generate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (job,) = [j for j in list_jobs(db, kind="generate-dataset") if j.dataset_name == "page-raft"]
    assert job.params["kind"] == "raft" and job.params["from_dataset"] == "plant-qa" and job.params["distractors"] == 2
    wait_for(lambda: get_job(db, job.id).finished, timeout=300, message="the job to finish")
    assert get_job(db, job.id).status == "succeeded", failure(db, job.id)
    assert get_dataset(db, "page-raft").example_count > 0


def test_the_fine_tune_plan_says_when_raft_examples_are_longer_than_the_max_sequence_length(db, plant, tiny_llama):
    """RAFT examples carry their passages (often ~1,000 tokens): a max sequence length below that cuts
    them, and one cut before its answer teaches nothing; the plan says so and how to fix it."""
    from core.jobs.queue import JobError
    from core.training.spec import PRESETS, with_overrides
    from core.training.submit import plan_job

    build_raft_dataset(db, "raft-long", from_dataset="plant-qa", collection=plant, distractors=3, seed=0,
                       oracle_fraction=1.0, model_id=tiny_llama)
    quick = PRESETS["quick CPU check"].settings
    roomy = plan_job(db, dataset="raft-long", base_model=tiny_llama, method="lora",
                     settings=with_overrides(quick, max_seq_length=512))
    assert roomy.length_warning is None and roomy.lengths.cut == 0
    longest = roomy.lengths.longest
    tight = plan_job(db, dataset="raft-long", base_model=tiny_llama, method="lora",
                     settings=with_overrides(quick, max_seq_length=longest - 1))
    assert tight.lengths.cut >= 1 and tight.lengths.left_out == 0 and tight.examples == roomy.examples
    assert f"(longest {longest:,} tokens) and are cut. Raise Max sequence length to {longest:,}" in tight.length_warning
    with pytest.raises(JobError, match=r"No example of dataset 'raft-long' can be trained: \d+ of \d+ examples are longer "
                                       r"than the max sequence length 16 .* lose their whole answer and are left out"):
        plan_job(db, dataset="raft-long", base_model=tiny_llama, method="lora",
                 settings=with_overrides(quick, max_seq_length=16))
