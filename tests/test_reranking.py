"""Cross-encoder reranking inside search, on the real server, with tiny random-weight cross-encoders.

No reranker ships with the app, so these models are built here from a config (BERT, one output, the bundled
MiniLM's tokenizer): their scores mean nothing, but they are real cross-encoders, so loading, pair scoring and
the reordering run the same code as for ms-marco-MiniLM or bge-reranker.
"""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import text

from core.documents.chunking import embedding_text
from core.documents.ingest import ingest_bytes
from core.documents.rerank import RerankModelError, _loaded, collection_reranker, set_collection_reranker
from core.documents.search import search

QUERY = "how often should the pump seal be replaced"
PASSAGES = {
    "pumps.md": "# Pumps\n\nReplace the pump seal every 4000 hours. The pump runs at 2900 rpm.",
    "valves.md": "# Valves\n\nThe relief valve opens at 6 bar. Check the valve seal each year.",
    "boiler.md": "# Boiler\n\nThe boiler holds water at 8 bar. Replace the boiler gasket when it leaks.",
    "seals.md": "# Seals\n\nA mechanical seal on a pump wears; replace seals before they leak water.",
    "flow.md": "# Flow\n\nWater flow through the pump is measured in cubic metres per hour.",
    "hours.md": "# Hours\n\nService hours are counted from the first start of each pump.",
}


def build_tiny_cross_encoder(folder, num_labels: int = 1, seed: int = 0) -> str:
    """A random BERT sequence classifier with one output saved with a real BERT tokenizer: a cross-encoder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from core.documents.embeddings import bundled_folders

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_folders()[0]))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, num_labels=num_labels, initializer_range=0.5,  # wide weights: distinct scores
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def logits_of(folder: str, query: str, passages: list[str]) -> list[float]:
    """The model's own output for each (query, passage) pair, computed with transformers directly."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer([query] * len(passages), passages, padding=True, truncation=True, return_tensors="pt")
        return model(**batch).logits[:, 0].tolist()


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory) -> str:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture
def plant(db, collection):
    for name, body in PASSAGES.items():
        ingest_bytes(db, collection, name, body.encode())
    return collection


def test_off_by_default(db, plant):
    assert collection_reranker(db, plant) is None
    hits = search(db, QUERY, collection=plant, k=6)
    assert hits and all(h.rerank_score is None for h in hits)
    assert hits == sorted(hits, key=lambda h: -h.score)  # the fused order, untouched


def test_collection_setting_reorders_by_the_cross_encoders_scores(db, plant, settings, tiny_reranker):
    fused = search(db, QUERY, collection=plant, k=6)
    assert set_collection_reranker(db, plant, tiny_reranker) == tiny_reranker
    assert collection_reranker(db, plant) == tiny_reranker

    reranked = search(db, QUERY, collection=plant, k=6)
    assert {h.chunk_id for h in reranked} == {h.chunk_id for h in fused}  # same candidates, new order
    expected = logits_of(tiny_reranker, QUERY, [embedding_text(h.heading, h.text) for h in reranked])
    assert [h.rerank_score for h in reranked] == pytest.approx(expected, abs=1e-4)
    assert [h.rerank_score for h in reranked] == sorted((h.rerank_score for h in reranked), reverse=True)
    assert [h.chunk_id for h in reranked] != [h.chunk_id for h in fused]  # this seed's model disagrees with fusion

    # k below the candidate count: the reranker still sees the best rerank_candidates hits and k come back.
    top = search(db, QUERY, collection=plant, k=2)
    assert [h.chunk_id for h in top] == [h.chunk_id for h in reranked[:2]]
    # The caller may skip the stage; turning the setting off restores the fused order for everyone.
    assert search(db, QUERY, collection=plant, k=6, rerank=False) == fused
    assert set_collection_reranker(db, plant, None) is None
    assert search(db, QUERY, collection=plant, k=6) == fused


def test_only_the_best_candidates_are_rescored(db, plant, settings, tiny_reranker):
    set_collection_reranker(db, plant, tiny_reranker)
    few = settings.model_copy(update={"rerank_candidates": 3})
    fused = search(db, QUERY, collection=plant, k=6, rerank=False)
    hits = search(db, QUERY, collection=plant, k=6, settings=few)
    assert {h.chunk_id for h in hits[:3]} == {h.chunk_id for h in fused[:3]}
    assert all(h.rerank_score is not None for h in hits[:3])
    assert hits[3:] == fused[3:]  # the rest keep the fused order, unscored


def test_rag_gets_the_stage_through_search(db, plant, tiny_reranker):
    """core/answers/rag.py calls search() with the collection only: the collection's setting applies."""
    set_collection_reranker(db, plant, tiny_reranker)
    hits = search(db, QUERY, collection=plant, k=4, mode="hybrid", document_ids=None)
    assert all(h.rerank_score is not None for h in hits)


def test_a_model_not_on_this_machine_is_refused_and_not_recorded(db, plant):
    with pytest.raises(RerankModelError, match="could not be loaded offline.*hf download"):
        set_collection_reranker(db, plant, "cross-encoder/ms-marco-MiniLM-L6-v2")
    with pytest.raises(RerankModelError, match="Models can be loaded from"):
        set_collection_reranker(db, plant, "/etc")
    assert collection_reranker(db, plant) is None


def test_a_classifier_with_several_outputs_is_not_a_reranker(db, plant, tmp_path):
    folder = build_tiny_cross_encoder(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(RerankModelError, match="2 outputs, not a reranker"):
        set_collection_reranker(db, plant, folder)
    assert collection_reranker(db, plant) is None


def test_a_reranker_gone_since_it_was_chosen_says_how_to_search_without_it(db, plant, tmp_path):
    folder = build_tiny_cross_encoder(tmp_path / "gone", seed=1)
    set_collection_reranker(db, plant, folder)
    shutil.rmtree(folder)
    _loaded.pop(folder, None)  # a fresh process: nothing loaded yet
    with pytest.raises(RerankModelError, match=f"Collection '{plant}' reranks.*--off"):
        search(db, QUERY, collection=plant, k=3)
    assert search(db, QUERY, collection=plant, k=3, rerank=False)  # the fused search still works


def test_the_setting_is_stored_with_the_collection(db, plant, tiny_reranker):
    set_collection_reranker(db, plant, tiny_reranker)
    with db.engine.connect() as connection:
        stored = connection.execute(text("SELECT rerank_model FROM collections WHERE name = :n"), {"n": plant}).scalar()
    assert stored == tiny_reranker


def test_cli_turns_reranking_on_and_off(db, plant, tiny_reranker, capsys):
    from core.cli import main

    assert main(["collections", "rerank", plant, "--rerank-model", tiny_reranker, "--json"]) == 0
    assert '"rerank_model": "' + tiny_reranker in capsys.readouterr().out
    assert main(["search", QUERY, "-c", plant, "-k", "2", "--json"]) == 0
    assert '"rerank_score": null' not in capsys.readouterr().out
    assert main(["search", QUERY, "-c", plant, "-k", "2", "--json", "--no-rerank"]) == 0
    assert '"rerank_score": null' in capsys.readouterr().out
    assert main(["collections", "rerank", plant]) == 2  # neither a model nor --off: a usage error
    assert "--rerank-model" in capsys.readouterr().err
    assert main(["collections", "rerank", plant, "--off"]) == 0
    assert collection_reranker(db, plant) is None


def test_documents_page_turns_reranking_on_and_off_and_shows_the_scores(db, settings, tiny_reranker, tmp_path):
    """Collection settings on the Documents page: a folder that is not a cross-encoder is refused in the page,
    a real one is recorded and the search results show its score, and it can be turned off again."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.documents.library import create_collection

    create_collection(db, "reranked-page")
    for name, body in PASSAGES.items():
        ingest_bytes(db, "reranked-page", name, body.encode())
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/documents.py").run()
    at.selectbox(key="selected_collection").select("reranked-page").run()
    assert not at.exception

    at.text_input(key="rerank_model").set_value(str(tmp_path / "missing")).run()
    at.button(key="set_reranker").click().run()
    assert at.error and collection_reranker(db, "reranked-page") is None

    at.text_input(key="rerank_model").set_value(tiny_reranker).run()
    at.button(key="set_reranker").click().run()
    assert not at.exception and not at.error
    assert collection_reranker(db, "reranked-page") == tiny_reranker
    at.text_input(key="search_query").set_value(QUERY)
    at.button(key="run_search").click().run()
    assert any("reranker " in c.value for c in at.caption)

    at.button(key="reranker_off").click().run()
    assert not at.exception and collection_reranker(db, "reranked-page") is None
