"""The advisor's questions as widgets (built from AdvisorAnswers' fields) and its advice."""

from __future__ import annotations

from dataclasses import fields

import streamlit as st

from core.evaluation.advisor import Advice, AdvisorAnswers
from core.ui.safe_text import literal


def advisor_questions(key: str = "advisor") -> AdvisorAnswers:
    """One widget per question: a choice for the multiple-choice ones, yes/no for the others."""
    defaults = AdvisorAnswers()
    values = {}
    for f in fields(AdvisorAnswers):
        default = getattr(defaults, f.name)
        if choices := f.metadata.get("choices"):
            values[f.name] = st.radio(f.metadata["help"], choices, index=choices.index(default), horizontal=True,
                                      key=f"{key}_{f.name}")
        else:
            values[f.name] = st.radio(f.metadata["help"], ("yes", "no"), index=0 if default else 1, horizontal=True,
                                      key=f"{key}_{f.name}") == "yes"
    return AdvisorAnswers(**values)


def render_advice(advice: Advice) -> None:
    st.subheader(f"Recommendation: {advice.label}")
    # Our sentences carry names users chose (exams, adapters): literal keeps Markdown from reading them.
    st.markdown("\n".join(f"- {literal(reason)}" for reason in advice.reasons))
    if advice.evidence:
        st.caption(f"Measured on exam {literal(repr(advice.exam))} (token F1: 0 to 1, higher is better; 95% bootstrap intervals)")
        st.dataframe(
            [{"measure": e.what, "value": round(e.value, 3), "95% interval":
              f"{e.low:+.2f} … {e.high:+.2f}" if e.verdict and e.low is not None else
              (f"{e.low:.2f} … {e.high:.2f}" if e.low is not None else ""),
              "questions": e.n, "verdict": e.verdict or "", "source": e.source} for e in advice.evidence],
            hide_index=True,
        )
    st.info(f"Next: {literal(advice.next_step)}")
