"""Chunks respect the token budget, overlap, point back into the text, and keep page and heading."""

import samples

from core.documents.chunking import chunk_document
from core.documents.embeddings import load_embedder
from core.documents.parsing import parse_document


def test_chunks_fit_the_budget_overlap_and_map_back_to_the_text():
    tokenizer = load_embedder().tokenizer
    sentences = " ".join(f"Sentence number {i} talks about pump impellers and seals." for i in range(200))
    parsed = parse_document("long.txt", sentences.encode())
    chunks = chunk_document(parsed, tokenizer, chunk_tokens=64, chunk_overlap=16)

    assert len(chunks) > 10
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 < chunk.token_count <= 64
        assert parsed.text[chunk.char_start : chunk.char_end] == chunk.text
    # consecutive chunks share text (the overlap), so a sentence cut at a border is still whole somewhere
    assert all(b.char_start < a.char_end for a, b in zip(chunks, chunks[1:], strict=False))


def test_chunks_never_cross_pages_and_keep_page_numbers():
    tokenizer = load_embedder().tokenizer
    parsed = parse_document("m.pdf", samples.pdf(["Alpha page text. " * 30, "Beta page text. " * 30]))
    chunks = chunk_document(parsed, tokenizer, chunk_tokens=32, chunk_overlap=0)
    assert {c.page for c in chunks} == {1, 2}
    for chunk in chunks:
        word = "Alpha" if chunk.page == 1 else "Beta"
        assert word in chunk.text and ("Beta" if word == "Alpha" else "Alpha") not in chunk.text


def test_markdown_chunks_keep_heading_and_embed_with_it():
    tokenizer = load_embedder().tokenizer
    parsed = parse_document("pumps.md", samples.MARKDOWN)
    chunks = chunk_document(parsed, tokenizer, chunk_tokens=200, chunk_overlap=20)
    maintenance = next(c for c in chunks if "mechanical seal" in c.text)
    assert maintenance.heading == "Centrifugal pumps > Maintenance"
    assert maintenance.text_for_embedding.startswith("Centrifugal pumps > Maintenance\n")
