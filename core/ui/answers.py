"""Drawing an answer: its text with citations that link to the passages beside it, and its timings.

The answer and the passages are untrusted (a document can carry a prompt injection): the answer is
drawn through safe_markdown, names and headings through literal, passages as plain text."""

from __future__ import annotations

import re

import streamlit as st

from core.answers.rag import Answer, AnswerTimings, Source
from core.ui.safe_text import literal, safe_markdown


def link_citations(text: str, turn: int, source_count: int) -> str:
    """In Markdown made by safe_markdown (its brackets escaped: \\[2\\]), [2] → a link to the anchor of
    source 2 of this turn (numbers without a source stay plain)."""

    def link(match: re.Match) -> str:
        if match.group(1) is None:  # an escaped backslash: the next character is the text's own
            return match.group(0)
        numbers = [n.strip() for n in re.split(r"[,;]", match.group(1))]
        if not all(n.isdigit() and 1 <= int(n) <= source_count for n in numbers):
            return match.group(0)
        return ", ".join(f"[\\[{n}\\]](#source-{turn}-{n})" for n in numbers)

    return re.sub(r"\\\\|\\\[(\d+(?:\s*[,;]\s*\d+)*)\\\]", link, text)


def answer_markdown(text: str, turn: int, source_count: int) -> str:
    """An answer as safe Markdown with its citations linked to the sources beside it."""
    return link_citations(safe_markdown(text), turn, source_count)


def render_sources(sources: list[Source], turn: int, cited: list[int]) -> None:
    if not sources:
        return
    st.caption("Sources (cited ones marked ★)")
    for source in sources:
        star = "★ " if source.number in cited else ""
        st.markdown(f'<span id="source-{turn}-{source.number}"></span>', unsafe_allow_html=True)
        label = f"{star}[{source.number}] {literal(source.filename)} · {literal(source.location)}"
        with st.expander(label, expanded=source.number in cited):
            similarity = f" · cosine {source.similarity:.3f}" if source.similarity is not None else ""
            st.caption(f"score {source.score:.4f}{similarity}")
            st.text(source.text)


def timings_line(t: AnswerTimings) -> str:
    parts = [f"{t.total_seconds:.1f} s in all"]
    if t.time_to_first_token is not None:
        parts.append(f"first token after {t.time_to_first_token:.2f} s")
    if t.tokens_per_second:
        parts.append(f"{t.tokens_per_second:.1f} tokens/s")
    parts.append(f"{t.context_tokens:,} tokens of context")
    if t.retrieval_seconds:
        parts.append(f"retrieval {t.retrieval_seconds * 1000:.0f} ms")
    return " · ".join(parts)


def answer_caption(answer: Answer) -> str:
    return f"{literal(answer.model)} · adapter: {literal(answer.adapter)} · {timings_line(answer.timings)}"


def render_answer(answer: Answer, turn: int) -> None:
    """A finished answer (from the chat history)."""
    text_column, sources_column = st.columns([3, 2]) if answer.sources else (st.container(), None)
    with text_column:
        st.markdown(answer_markdown(answer.text, turn, len(answer.sources)))
        st.caption(answer_caption(answer))
    if sources_column is not None:
        with sources_column:
            render_sources(answer.sources, turn, answer.cited)
