"""Vector, keyword and hybrid search on the real server, with filters and hostile queries."""

import pytest
import samples
from sqlalchemy import text

from core.documents.ingest import ingest_bytes
from core.documents.library import LibraryError
from core.documents.search import SEARCH_MODES, QueryError, search
from core.ui.format import hit_scores


@pytest.fixture(scope="module")
def library(db):
    """One collection with four documents of different formats, and one unrelated collection."""
    from core.documents.library import create_collection

    create_collection(db, "plant")
    ids = {}
    for name, data in [
        ("pumps.md", samples.MARKDOWN),
        ("valves.html", samples.HTML),
        ("memo.txt", samples.TEXT.encode()),
        ("manual.pdf", samples.pdf(["Introduction to the plant.", "The cooling tower fan runs at 900 rpm."])),
    ]:
        ids[name] = ingest_bytes(db, "plant", name, data).document_id
    create_collection(db, "kitchen")
    ingest_bytes(db, "kitchen", "recipes.txt", b"Replace the seal of the pressure cooker when it leaks steam.")
    return ids


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_every_mode_finds_the_passage(db, library, mode):
    hits = search(db, "how often should the mechanical seal be replaced", collection="plant", k=3, mode=mode)
    assert hits[0].filename == "pumps.md"
    assert "Replace the mechanical seal" in hits[0].text
    assert hits[0].heading == "Centrifugal pumps > Maintenance"
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_hits_carry_page_offsets_and_the_scores_of_each_side(db, library):
    (hit,) = search(db, "cooling tower fan speed rpm", collection="plant", k=1, mode="hybrid")
    assert (hit.filename, hit.page) == ("manual.pdf", 2)
    assert hit.char_end - hit.char_start == len(hit.text)
    assert hit.vector_rank == 1 and hit.keyword_rank == 1
    assert hit.vector_similarity > 0.3 and hit.keyword_score > 0
    assert hit.score == pytest.approx(2 / (60 + 1))


def test_keyword_mode_matches_any_word_not_all(db, library):
    hits = search(db, "gate valve zebra unicorn", collection="plant", mode="keyword")
    assert hits and hits[0].filename == "valves.html"
    assert all(h.vector_similarity is None for h in hits)


def test_keyword_ranking_weighs_rare_words_above_common_ones(db):
    """BM25: the one chunk with the rare word "impeller" beats a chunk that repeats the common "pump"."""
    from core.documents.library import create_collection, delete_collection

    create_collection(db, "bm25")
    notes = {
        "a.txt": "The pump, the pump, the pump: the pump runs and the pump hums.",
        "b.txt": "The pump is quiet today.",
        "c.txt": "The pump needs oil.",
        "d.txt": "The impeller is cracked.",
        "e.txt": "The pump and the motor are aligned.",
    }
    try:
        for name, note in notes.items():
            assert ingest_bytes(db, "bm25", name, note.encode()).ok
        hits = search(db, "pump impeller", collection="bm25", mode="keyword", k=5)
    finally:
        delete_collection(db, "bm25")  # the module's other tests list the collections
    assert [h.filename for h in hits][:2] == ["d.txt", "a.txt"]
    assert len(hits) == 5 and hits == sorted(hits, key=lambda h: -h.score)


def test_keyword_ranking_within_a_document_filter_uses_that_documents_statistics(db):
    """Filtered to one manual where "pump" is everywhere, "seal" decides, even though "pump" is rare in
    the rest of the collection (mixing the two scopes ranked the chunk repeating "pump" first)."""
    from core.documents.ingest import ingest_files
    from core.documents.library import create_collection, delete_collection

    create_collection(db, "bm25-filter")
    sections = ["## Part 1\n\nThe pump pump pump pump pump in bay one is checked by the morning crew each day."]
    sections += [f"## Part {n}\n\nThe pump in bay {n} is checked by the morning crew every single day." for n in range(2, 10)]
    sections.append("## Part 10\n\nThe seal in bay ten is checked by the morning crew every single day.")
    others = [(f"note-{n}.txt", f"Weather note {n}: the morning was calm, dry and bright over the site.".encode())
              for n in range(250)]
    try:
        outcomes = ingest_files(db, "bm25-filter", [("manual.md", "\n\n".join(sections).encode()), *others])
        assert all(o.ok for o in outcomes) and outcomes[0].chunks == 10
        hits = search(db, "pump seal", collection="bm25-filter", mode="keyword", k=3, document_ids=[outcomes[0].document_id])
    finally:
        delete_collection(db, "bm25-filter")
    assert "seal" in hits[0].text


def test_hybrid_hits_found_only_by_keyword_carry_their_cosine_similarity(db, settings):
    """RAG's relevance threshold reads the similarity: a hit outside the vector side's pool gets it too."""
    import numpy as np

    from core.documents.embeddings import load_embedder
    from core.documents.library import create_collection, delete_collection

    create_collection(db, "keyword-only")
    notes = [f"Lubrication note {n}: grease the pump bearings every {n + 1} months." for n in range(6)]
    notes.append("The zirconia crucible is stored in cabinet four.")
    narrow = settings.model_copy(update={"search_candidates": 1})  # the vector side sees only k chunks
    query = "bearing lubrication zirconia"
    try:
        for number, note in enumerate(notes):
            assert ingest_bytes(db, "keyword-only", f"note-{number}.txt", note.encode()).ok
        hits = search(db, query, collection="keyword-only", k=4, mode="hybrid", settings=narrow)
    finally:
        delete_collection(db, "keyword-only")
    (zirconia,) = [h for h in hits if "zirconia" in h.text]
    assert zirconia.vector_rank is None and zirconia.keyword_rank == 1
    expected = float(np.dot(*load_embedder().embed([query, zirconia.text])))
    assert zirconia.vector_similarity == pytest.approx(expected, abs=1e-4)
    # Shown as "score … · cosine … · BM25 … (#1)": no rank where the vector side did not rank it.
    shown = hit_scores(zirconia)
    assert f"cosine {expected:.3f} · BM25 " in shown and shown.endswith("(#1)") and "None" not in shown


def test_keyword_mode_finds_nothing_for_unknown_words(db, library):
    assert search(db, "xylophone zeppelin", collection="plant", mode="keyword") == []


def test_collections_are_searched_separately(db, library):
    hits = search(db, "replace the seal", collection="plant", k=20, mode="hybrid")
    assert "recipes.txt" not in {h.filename for h in hits}
    (kitchen,) = search(db, "replace the seal", collection="kitchen", k=5)
    assert kitchen.filename == "recipes.txt"


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_document_filter(db, library, mode):
    hits = search(db, "seal", collection="plant", k=10, mode=mode, document_ids=[library["memo.txt"]])
    assert {h.filename for h in hits} <= {"memo.txt"}
    assert mode == "keyword" or hits  # the vector side always returns the nearest chunks of that document


def test_sql_in_the_query_is_just_text(db, library):
    for query in ["'; DROP TABLE chunks; --", "seal' OR 1=1 --", "\\x00 & | ! <-> :* ()", "SELECT * FROM documents"]:
        for mode in SEARCH_MODES:
            search(db, query, collection="plant", mode=mode)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM chunks")).scalar() > 0


def test_a_10000_character_query_is_refused_with_advice(db, library):
    with pytest.raises(QueryError, match="10,000 characters long; the limit is 2,000"):
        search(db, "pumps" * 2000, collection="plant")


@pytest.mark.parametrize("query", ["", "   ", "\x00"])
def test_empty_query_is_refused(db, library, query):
    with pytest.raises(QueryError, match="Type a question"):
        search(db, query, collection="plant")


def test_unknown_collection_and_bad_arguments(db, library):
    with pytest.raises(LibraryError, match="No collection named 'nope'. Existing collections: kitchen, plant"):
        search(db, "seal", collection="nope")
    with pytest.raises(QueryError, match="Unknown search mode"):
        search(db, "seal", collection="plant", mode="fuzzy")
    with pytest.raises(QueryError, match="k must be"):
        search(db, "seal", collection="plant", k=0)
