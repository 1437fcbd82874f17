"""Widgets more than one page needs."""

from __future__ import annotations

import streamlit as st

from core.db import Database
from core.documents.embedding_api import embedding_reference
from core.documents.library import CollectionInfo, create_collection, ensure_collection, list_collections
from core.errors import UserError

SELECTED_COLLECTION = "selected_collection"
_NEW_COLLECTION_POPOVER = "new_collection_popover"
_NEW_COLLECTION_ERROR = "new_collection_error"


def collection_picker(db: Database) -> CollectionInfo:
    """Pick the collection to work in (a "default" one exists from the first visit), or make one."""
    collections = list_collections(db) or [ensure_collection(db, "default")]
    names = [c.name for c in collections]
    if st.session_state.get(SELECTED_COLLECTION) not in names:
        st.session_state[SELECTED_COLLECTION] = names[0]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.selectbox("Collection", names, key=SELECTED_COLLECTION, help="Collections keep fields apart.")
    # A popover that tracks its state (on_change="rerun") can be closed from code: Create closes it.
    with right.popover("New collection", icon=":material/add:", width="stretch", key=_NEW_COLLECTION_POPOVER,
                       on_change="rerun"):
        new_collection_form(db)
    return next(c for c in collections if c.name == name)


def new_collection_form(db: Database) -> None:
    with st.form("new_collection", clear_on_submit=True, border=False):
        st.text_input("Name", placeholder="e.g. Pump manuals", key="new_collection_name")
        st.text_input(
            "Embedding model", placeholder="default: bundled all-MiniLM-L6-v2", key="new_collection_model",
            help="A sentence-transformers id in the local cache, a folder, or an API model (openai:text-embedding-3-small, "
            "api:NAME at EXPERT_STUDIO_EMBEDDING_API_BASE, azure:DEPLOYMENT). Fixed once the collection has documents.",
        )
        st.number_input("Dimensions (API models, optional)", min_value=1, max_value=2000, value=None, step=1,
                        key="new_collection_dimensions", help="Shorter vectors from models that take it (text-embedding-3).")
        st.checkbox("Trust remote code", key="new_collection_trust_remote_code",
                    help="Some local models (jina-embeddings-v2) run Python code from their repository. Only for a "
                    "repository you trust: that code runs on this server whenever this collection embeds.")
        st.caption(":material/warning: Trust remote code only for a model repository you trust: its Python code runs here.")
        st.number_input("Chunk size (tokens)", min_value=16, max_value=8192, value=200, step=10, key="new_collection_tokens")
        st.number_input("Overlap (tokens)", min_value=0, max_value=4096, value=40, step=5, key="new_collection_overlap")
        st.form_submit_button("Create", key="create_collection", on_click=_create_collection, args=(db,))
        if error := st.session_state.pop(_NEW_COLLECTION_ERROR, None):
            st.error(error)


def _create_collection(db: Database) -> None:
    """Runs before the rerun, while the picker and the popover may still be changed: select the new one, close."""
    state = st.session_state
    try:
        model = state["new_collection_model"] or None
        dimensions, trusted = state.get("new_collection_dimensions"), bool(state.get("new_collection_trust_remote_code"))
        if model is None and (dimensions is not None or trusted):
            raise UserError("Dimensions and 'Trust remote code' go with an embedding model: name one.")
        if model is not None:
            model = embedding_reference(model, dimensions=None if dimensions is None else int(dimensions),
                                        trust_remote_code=trusted)
        created = create_collection(
            db, state["new_collection_name"], embedding_model=model,
            chunk_tokens=int(state["new_collection_tokens"]), chunk_overlap=int(state["new_collection_overlap"]),
        )
    except UserError as error:  # a taken name, or an embedding model that cannot load
        state[_NEW_COLLECTION_ERROR] = str(error)  # shown in the form, which stays open
    else:
        state[SELECTED_COLLECTION] = created.name
        state[_NEW_COLLECTION_POPOVER] = False
