"""Widgets more than one page needs."""

from __future__ import annotations

import streamlit as st

from core.db import Database
from core.library import CollectionInfo, LibraryError, create_collection, ensure_collection, list_collections

SELECTED_COLLECTION = "selected_collection"
# A widget's key cannot be written once the widget exists in a run: a new collection is selected
# through this key on the next run instead.
_PENDING_SELECTION = "pending_collection_selection"


def collection_picker(db: Database) -> CollectionInfo:
    """Pick the collection to work in (a "default" one exists from the first visit), or make one."""
    collections = list_collections(db) or [ensure_collection(db, "default")]
    names = [c.name for c in collections]
    if st.session_state.get(_PENDING_SELECTION) in names:
        st.session_state[SELECTED_COLLECTION] = st.session_state.pop(_PENDING_SELECTION)
    if st.session_state.get(SELECTED_COLLECTION) not in names:
        st.session_state[SELECTED_COLLECTION] = names[0]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.selectbox("Collection", names, key=SELECTED_COLLECTION, help="Collections keep fields apart.")
    with right.popover("New collection", icon=":material/add:", width="stretch"):
        new_collection_form(db)
    return next(c for c in collections if c.name == name)


def new_collection_form(db: Database) -> None:
    with st.form("new_collection", clear_on_submit=True, border=False):
        name = st.text_input("Name", placeholder="e.g. Pump manuals", key="new_collection_name")
        model = st.text_input(
            "Embedding model", placeholder="default: bundled all-MiniLM-L6-v2",
            help="A sentence-transformers id in the local cache, or a folder. Fixed once the collection has documents.",
        )
        tokens = st.number_input("Chunk size (tokens)", min_value=16, max_value=8192, value=200, step=10)
        overlap = st.number_input("Overlap (tokens)", min_value=0, max_value=4096, value=40, step=5)
        if st.form_submit_button("Create", key="create_collection"):
            try:
                created = create_collection(
                    db, name, embedding_model=model or None, chunk_tokens=int(tokens), chunk_overlap=int(overlap)
                )
            except LibraryError as error:
                st.error(str(error))
            else:
                st.session_state[_PENDING_SELECTION] = created.name
                st.rerun()
