"""The sidebar every page shares: which database, which models, how many documents."""

from __future__ import annotations

import streamlit as st

from core.config import get_settings
from core.db import Database
from core.documents.library import library_stats
from core.formatting import plural
from core.ui.auth import render_account


def render_sidebar(db: Database) -> None:
    stats = library_stats(db)
    settings = get_settings()
    with st.sidebar:
        st.caption("Library")
        counts = ((stats.documents, "document"), (stats.chunks, "chunk"), (stats.collections, "collection"))
        st.markdown(" · ".join(plural(n, word, bold=True) for n, word in counts))
        st.caption("Database")
        kind = "Embedded Postgres" if db.embedded else "External Postgres"
        st.markdown(f"{kind}  \n`{db.description.split(' in ', 1)[-1] if db.embedded else db.description}`")
        st.caption("Models")
        st.markdown(f"Language: `{settings.language_model}`  \nEmbeddings: `{settings.embedding_model}`")
        render_account(settings)
