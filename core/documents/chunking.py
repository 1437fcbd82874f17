"""Token-aware chunking with overlap (semantic-text-splitter), one section at a time.

Chunks never cross a section, so each keeps exactly one page and heading to cite. Sizes are
counted with the embedding model's own tokenizer, so no chunk is silently truncated when embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from semantic_text_splitter import MarkdownSplitter, TextSplitter

from core.documents.parsing import SECTION_SEPARATOR, ParsedDocument


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    text: str
    page: int | None
    heading: str | None
    char_start: int  # offsets into ParsedDocument.text
    char_end: int
    token_count: int

    @property
    def text_for_embedding(self) -> str:
        """The chunk with its heading path in front, so a passage deep in a section still carries
        what the section is about (the stored text stays exactly what the document says)."""
        return embedding_text(self.heading, self.text)


def embedding_text(heading: str | None, text: str) -> str:
    """What gets embedded for a chunk: its heading path, then its text."""
    return f"{heading}\n{text}" if heading else text


@lru_cache(maxsize=16)
def _splitter(tokenizer_json: str, markdown: bool, capacity: int, overlap: int):
    cls = MarkdownSplitter if markdown else TextSplitter
    return cls.from_huggingface_tokenizer_str(tokenizer_json, capacity, overlap)


def chunk_document(parsed: ParsedDocument, tokenizer, chunk_tokens: int, chunk_overlap: int) -> list[ChunkDraft]:
    """Split every section of `parsed` into chunks of at most `chunk_tokens` tokens of `tokenizer`
    (a `tokenizers.Tokenizer`), consecutive chunks sharing up to `chunk_overlap` tokens."""
    splitter = _splitter(tokenizer.to_str(), parsed.file_type == "markdown", chunk_tokens, chunk_overlap)
    pieces: list[tuple[int, str, int | None, str | None]] = []
    section_start = 0
    for section in parsed.sections:
        for offset, text in splitter.chunk_indices(section.text):
            pieces.append((section_start + offset, text, section.page, section.heading))
        section_start += len(section.text) + len(SECTION_SEPARATOR)

    counts = [len(e.ids) for e in tokenizer.encode_batch([text for _, text, _, _ in pieces], add_special_tokens=False)]
    return [
        ChunkDraft(
            ordinal=ordinal,
            text=text,
            page=page,
            heading=heading,
            char_start=start,
            char_end=start + len(text),
            token_count=count,
        )
        for ordinal, ((start, text, page, heading), count) in enumerate(zip(pieces, counts, strict=True))
    ]
