"""Drawing a comparison: one column per variant (or per blind label), streamed one after another,
the vote's reveal, and the ranking from the votes. Model text is shown as plain text (st.text):
no Markdown or HTML from a model reaches the page; names (the adapter's) go through literal."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import streamlit as st

from core.evaluation.compare import LABELS, VariantAnswer
from core.evaluation.votes import Ranking
from core.ui.answers import render_sources
from core.ui.safe_text import literal

NO_TEXT = "(no answer: the model ended its turn at once)"


@dataclass
class ShownComparison:
    """A comparison as the page keeps it between reruns (in st.session_state)."""

    question: str
    collection: str | None
    model: str
    adapter: str | None
    settings: dict
    answers: list[VariantAnswer]
    order: dict[str, str] | None = None  # blind mode: label → variant, in the order shown
    choice: str | None = None  # the vote, once given (a variant, "tie" or "all wrong")
    streamed: bool = field(default=False)

    @property
    def blind(self) -> bool:
        return self.order is not None

    @property
    def revealed(self) -> bool:
        return not self.blind or self.choice is not None

    def shown(self) -> list[tuple[str, VariantAnswer]]:
        """(heading, answer) in the order shown."""
        by_variant = {a.variant: a for a in self.answers}
        if not self.blind:
            return [(self._name(a.variant), a) for a in self.answers]
        return [(f"Answer {label}" + (f": {self._name(variant)}" if self.revealed else ""), by_variant[variant])
                for label, variant in self.order.items()]

    def _name(self, variant: str) -> str:
        adapter = f" ({self.adapter})" if variant in ("ft", "rag+ft") and self.adapter else ""
        return LABELS[variant] + adapter

    @property
    def shown_order(self) -> list[str]:
        return list(self.order.values()) if self.blind else [a.variant for a in self.answers]

    def variant_of(self, pick: str) -> str:
        """The variant behind a blind label (A-D); "tie" and "all wrong" stay as they are."""
        return self.order.get(pick, pick) if self.blind else pick


def timings_caption(answer: VariantAnswer) -> str:
    t = answer.timings
    first = f"first token {t.time_to_first_token:.2f} s" if t.time_to_first_token is not None else "no tokens"
    speed = f" · {t.tokens_per_second:.1f} tokens/s" if t.tokens_per_second else ""
    return f"{t.total_seconds:.1f} s · {first} · {t.new_tokens} tokens{speed}"


def _stream_plain(slot, pieces: Iterable[str]) -> None:
    so_far = ""
    for piece in pieces:
        so_far += piece
        slot.text(so_far)


def render_comparison(shown: ShownComparison, *, stream: bool = False) -> None:
    """Columns side by side. With `stream`, the answers are generated now, one column after another;
    blind answers hide their timings and passages (they would give the variant away) until the vote."""
    entries = shown.shown()
    slots = []
    for column, (heading, answer) in zip(st.columns(len(entries), border=True), entries, strict=True):
        with column:
            st.markdown(f"**{literal(heading)}**")
            text_slot, caption_slot = st.empty(), st.empty()
            if stream:
                text_slot.caption("waiting…")
            slots.append((answer, text_slot, caption_slot, st.container()))
    for number, (answer, text_slot, caption_slot, sources) in enumerate(slots):
        if stream:
            _stream_plain(text_slot, answer.stream())
        text_slot.text(answer.text or NO_TEXT)
        if shown.revealed:
            caption_slot.caption(timings_caption(answer))
            with sources:
                render_sources(answer.sources, 100 + number, answer.answer.cited)
    shown.streamed = True


def reveal_line(shown: ShownComparison) -> str:
    return " · ".join(f"{label} was {LABELS[variant]}" for label, variant in shown.order.items())


def choice_label(shown: ShownComparison) -> str:
    """The vote in words: "B (Base + RAG)", or "a tie"."""
    if shown.choice in shown.shown_order:
        label = next(k for k, v in shown.order.items() if v == shown.choice) if shown.blind else ""
        return f"{label} ({LABELS[shown.choice]})" if label else LABELS[shown.choice]
    return "a tie" if shown.choice == "tie" else "all wrong"


def render_ranking(ranking: Ranking) -> None:
    if not ranking.votes:
        st.caption(ranking.message)
        return
    st.dataframe(
        [{"variant": v.label, "strength": v.strength, "95% interval": f"{v.low:.2f} – {v.high:.2f}", "votes": v.votes}
         for v in ranking.variants],
        hide_index=True, column_config={"strength": st.column_config.NumberColumn(format="%.2f")},
    )
    (st.success if ranking.decided else st.info)(ranking.message)

