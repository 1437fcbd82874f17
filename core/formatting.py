"""Counts and sizes as people read them; shared by core's messages, the CLI and the pages."""

from __future__ import annotations


def plural(n: int, word: str, plural_word: str | None = None, *, bold: bool = False) -> str:
    """"1 chunk", "3 chunks", "1,204 chunks": a count with its noun in the right number (`bold`: "**3** chunks")."""
    count = f"**{n:,}**" if bold else f"{n:,}"
    return f"{count} {word if n == 1 else plural_word or word + 's'}"


def human_size(n: float) -> str:
    """Bytes in the largest unit under 1024 of them: "512 B", "1.5 KB", "230.0 MB", "3.2 GB" (1 KB = 1024 B)."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
