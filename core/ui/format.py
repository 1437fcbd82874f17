"""Small formatting helpers shared by the pages."""

from __future__ import annotations

from core.documents.library import DocumentInfo
from core.documents.search import SearchHit
from core.formatting import human_size


def documents_table(documents: list[DocumentInfo]) -> list[dict]:
    return [
        {
            "name": d.filename,
            "type": d.file_type,
            "pages": f"{d.pages:,}" if d.pages else "—",  # "—" for files without pages, not "None"
            "chunks": d.chunk_count,
            "size": human_size(d.size_bytes),
            "added": d.created_at.strftime("%Y-%m-%d %H:%M"),
            "id": d.id,
        }
        for d in documents
    ]


def hit_location(hit: SearchHit) -> str:
    """Where a passage is, as a reader would look for it: page, else section, else chunk number."""
    if hit.page:
        return f"page {hit.page}"
    if hit.heading:
        return f"§ {hit.heading}"
    return f"chunk {hit.ordinal + 1}"


def hit_scores(hit: SearchHit) -> str:
    parts = [f"score {hit.score:.4f}"]
    if hit.vector_similarity is not None:
        parts.append(f"cosine {hit.vector_similarity:.3f}" + (f" (#{hit.vector_rank})" if hit.vector_rank else ""))
    if hit.keyword_score is not None:
        parts.append(f"BM25 {hit.keyword_score:.2f}" + (f" (#{hit.keyword_rank})" if hit.keyword_rank else ""))
    if hit.rerank_score is not None:
        parts.append(f"reranker {hit.rerank_score:.2f}")
    return " · ".join(parts)
