"""Small formatting helpers shared by the pages."""

from __future__ import annotations

from core.library import DocumentInfo
from core.store import SearchHit


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def documents_table(documents: list[DocumentInfo]) -> list[dict]:
    return [
        {
            "name": d.filename,
            "type": d.file_type,
            "pages": d.pages,
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
        parts.append(f"cosine {hit.vector_similarity:.3f} (#{hit.vector_rank})")
    if hit.keyword_score is not None:
        parts.append(f"keyword {hit.keyword_score:.3f} (#{hit.keyword_rank})")
    return " · ".join(parts)
