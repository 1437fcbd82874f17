"""Home: what to do first on a new install, and an overview once documents exist."""

import streamlit as st

from core.documents.library import list_collections
from core.ui.auth import require_access
from core.ui.guide import render_guided_path
from core.ui.resources import database

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

st.title("Expert Studio")
st.write("Make a small language model an expert in your field, from your own documents.")

collections = list_collections(database())
if not any(c.document_count for c in collections):
    st.subheader("Start here")
    st.markdown(
        "1. **Upload your documents** (PDF, Word, Markdown, HTML, text or CSV) on the Documents page.\n"
        "2. **Search them** on the same page to check that the right passages come back.\n"
        "3. The models run where Expert Studio runs, and your documents go only to its database (embedded here "
        "unless DATABASE_URL names another). Who can open this app depends on how it is served: see docs/security.md."
    )
    st.page_link("pages/documents.py", label="Go to Documents", icon=":material/upload_file:")
else:
    st.subheader("Your collections")
    st.dataframe(
        [{"collection": c.name, "documents": c.document_count, "chunks": c.chunk_count, "embedding model": c.embedding_model}
         for c in collections],
        hide_index=True,
    )
    st.page_link("pages/documents.py", label="Documents and search", icon=":material/description:")

    st.subheader("From your documents to a verdict")
    st.caption("RAG, fine-tuning or both? Each step is saved as you go: leave and come back at any time.")
    path_collection = st.selectbox("Collection", [c.name for c in collections if c.document_count], key="home_path_collection")
    render_guided_path(database(), path_collection)
