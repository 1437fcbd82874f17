"""RAG on the real database with a tiny random model: passages fit the context budget, are
numbered, carry their document and page, and nothing relevant means no invented answer."""

import pytest
import samples

from core.answers.rag import QuestionError, ask, cited_numbers, fit_sources
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.documents.search import SearchHit, search
from core.models import AdapterError, ModelNotAvailable, load_model


@pytest.fixture(scope="module")
def plant(db):
    create_collection(db, "plant")
    ingest_bytes(db, "plant", "pumps.md", samples.MARKDOWN)
    ingest_bytes(db, "plant", "memo.txt", samples.TEXT.encode())
    ingest_bytes(db, "plant", "manual.pdf", samples.pdf(["Introduction.", "The cooling tower fan runs at 900 rpm."]))
    create_collection(db, "empty")
    return "plant"


def hit(number: int, text: str) -> SearchHit:
    return SearchHit(number, 1, f"doc{number}.pdf", number, None, text, 0, 0, len(text), 1.0 / number, 0.5, None, number, None)


def test_passages_are_numbered_and_fit_the_budget(tiny_llama):
    loaded = load_model(tiny_llama)  # 512-token context window
    hits = [hit(n, " ".join(["pump seal valve water"] * 25)) for n in range(1, 11)]  # ~100 tokens each
    prompt = fit_sources(loaded, "when does the valve open ?", hits, max_new_tokens=128)
    assert prompt.prompt_tokens <= 512 - 128
    assert 1 <= len(prompt.sources) < 10 and prompt.left_out == 10 - len(prompt.sources)
    assert [s.number for s in prompt.sources] == list(range(1, len(prompt.sources) + 1))
    user_turn = prompt.messages[-1]["content"]
    for source in prompt.sources:
        assert f"[{source.number}] {source.filename} (page {source.page})" in user_turn
    assert user_turn.endswith("Question: when does the valve open ?")
    assert "Cite each source" in prompt.messages[0]["content"]


def test_a_passage_too_long_for_the_window_is_cut_to_fit(tiny_llama):
    loaded = load_model(tiny_llama)
    prompt = fit_sources(loaded, "what is the pressure ?", [hit(1, "pressure " * 2000)], max_new_tokens=64)
    (source,) = prompt.sources
    assert source.text.endswith(" …") and len(source.text) < 2000 * 9
    assert prompt.prompt_tokens <= 512 - 64


def test_citation_numbers_are_read_from_the_answer():
    assert cited_numbers("Seals last 2,000 hours [2]. Check bearings [1][2]; see also [3, 1] and [9].", 3) == [2, 1, 3]
    assert cited_numbers("No citations here.", 3) == []


def test_answer_carries_the_retrieved_sources_and_timings(db, plant, tiny_llama):
    expected = search(db, "relief valve pressure of boiler B2", collection=plant, k=5)
    answer = ask(db, "relief valve pressure of boiler B2", collection=plant, model_id=tiny_llama, max_new_tokens=8)
    assert answer.sources[0].filename == "memo.txt"
    assert [s.chunk_id for s in answer.sources] == [h.chunk_id for h in expected if h.vector_similarity >= 0.25]
    pieces = list(answer.stream())
    assert pieces and answer.text == "".join(pieces).strip()
    t = answer.timings
    assert t.retrieval_seconds > 0 and t.time_to_first_token >= t.retrieval_seconds
    assert t.context_tokens > 20 and t.new_tokens == 8
    assert answer.to_dict()["sources"][0]["filename"] == "memo.txt"


def test_pdf_sources_cite_their_page(db, plant, tiny_llama):
    answer = ask(db, "cooling tower fan speed", collection=plant, model_id=tiny_llama, max_new_tokens=4).complete()
    assert (answer.sources[0].filename, answer.sources[0].page, answer.sources[0].location) == ("manual.pdf", 2, "page 2")


def test_nothing_relevant_means_no_invented_answer(db, plant, tiny_llama, settings):
    strict = settings.model_copy(update={"rag_min_similarity": 0.99})
    answer = ask(db, "who won the football world cup in 1954", collection=plant, model_id=tiny_llama, settings=strict)
    assert answer.nothing_found and answer.sources == []
    assert list(answer.stream()) == [answer.text]
    assert answer.text.startswith("I found nothing about this in the collection 'plant'")


def test_without_rag_the_model_answers_alone(db, plant, tiny_llama):
    answer = ask(db, "hello", use_rag=False, model_id=tiny_llama, max_new_tokens=3).complete()
    assert answer.sources == [] and answer.collection is None and answer.timings.new_tokens == 3


def test_bad_questions_get_specific_messages(db, plant, tiny_llama):
    with pytest.raises(QuestionError, match="Type a question"):
        ask(db, "   ", collection=plant, model_id=tiny_llama)
    with pytest.raises(QuestionError, match=r"tokens long; .* reads 512 tokens in all, and 256 are kept for the answer"):
        ask(db, "pump " * 400, collection=plant, model_id=tiny_llama, max_new_tokens=256)
    with pytest.raises(QuestionError, match="'empty' has no documents yet"):
        ask(db, "anything", collection="empty", model_id=tiny_llama)
    with pytest.raises(QuestionError, match="Choose a collection"):
        ask(db, "anything", collection=None, model_id=tiny_llama)
    with pytest.raises(AdapterError, match="No adapter named 'ghost'"):
        ask(db, "anything", collection=plant, model_id=tiny_llama, adapter="ghost")
    with pytest.raises(ModelNotAvailable, match="never downloaded"):
        ask(db, "anything", collection=plant, model_id="someone/missing-model")
