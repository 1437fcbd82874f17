"""The guided path on the Home page, and page links that tolerate a page this app does not have."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from core.db import Database
from core.evaluation.guide import guided_path_state
from core.ui.safe_text import code, literal

STATE_ICONS = {"done": ":material/check_circle:", "running": ":material/progress_activity:", "to do": ":material/radio_button_unchecked:"}


def page_link(page: str, label: str, icon: str | None = None, fallback: str = "") -> bool:
    """st.page_link, or `fallback` as a caption when the navigation does not list `page`."""
    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitPageNotFoundError:
        if fallback:
            st.caption(fallback)
        return False
    return True


def render_guided_path(db: Database, collection: str) -> None:
    """Each step with its state (done / running / to do), what is there, and a link to its page."""
    for number, step in enumerate(guided_path_state(db, collection), start=1):
        text, link = st.columns([3, 1], vertical_alignment="center")
        text.markdown(f"{STATE_ICONS[step.state]} **{number}. {step.title}** · {step.state}")
        text.caption(literal(step.detail))  # names users chose (collection, exam, adapter)
        with link:
            page_link(step.page, label="Open" if step.state != "to do" else "Start", icon=":material/arrow_forward:",
                      fallback=code(step.command))
