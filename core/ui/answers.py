"""Drawing an answer: its text with citations that link to the passages beside it, and its timings."""

from __future__ import annotations

import re

import streamlit as st

from core.answers.rag import Answer, AnswerTimings, Source


def link_citations(text: str, turn: int, source_count: int) -> str:
    """[2] → a link to the anchor of source 2 of this turn (numbers without a source stay plain)."""

    def link(match: re.Match) -> str:
        numbers = [n.strip() for n in re.split(r"[,;]", match.group(1))]
        if not all(n.isdigit() and 1 <= int(n) <= source_count for n in numbers):
            return match.group(0)
        return ", ".join(f"[\\[{n}\\]](#source-{turn}-{n})" for n in numbers)

    return re.sub(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]", link, text)


def render_sources(sources: list[Source], turn: int, cited: list[int]) -> None:
    if not sources:
        return
    st.caption("Sources (cited ones marked ★)")
    for source in sources:
        star = "★ " if source.number in cited else ""
        st.markdown(f'<span id="source-{turn}-{source.number}"></span>', unsafe_allow_html=True)
        with st.expander(f"{star}[{source.number}] {source.filename} · {source.location}", expanded=source.number in cited):
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


def render_answer(answer: Answer, turn: int) -> None:
    """A finished answer (from the chat history)."""
    text_column, sources_column = st.columns([3, 2]) if answer.sources else (st.container(), None)
    with text_column:
        st.markdown(link_citations(answer.text, turn, len(answer.sources)))
        st.caption(f"{answer.model} · adapter: {answer.adapter} · {timings_line(answer.timings)}")
    if sources_column is not None:
        with sources_column:
            render_sources(answer.sources, turn, answer.cited)
