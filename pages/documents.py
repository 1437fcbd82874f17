"""Documents: upload files into a collection, browse and delete them, and search their passages.

Document text is untrusted: passages are drawn as plain text (st.text), file names and headings
through literal wherever Markdown is read (captions, labels, alerts)."""

import streamlit as st

from core.config import get_settings
from core.documents.ingest import ingest_files
from core.documents.library import (
    delete_collection,
    delete_document,
    document_chunks,
    list_documents,
)
from core.documents.parsing import SUPPORTED_TYPES
from core.documents.reembed_job import submit_reembed
from core.documents.rerank import collection_reranker, set_collection_reranker
from core.documents.search import SEARCH_MODES, search
from core.formatting import plural
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.format import documents_table, hit_location, hit_scores
from core.ui.jobs import job_view
from core.ui.resources import database
from core.ui.safe_text import code, literal
from core.ui.tracked_jobs import start_tracking, tracked_jobs
from core.ui.widgets import collection_picker

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

STAGES = {"parse": "reading", "chunk": "splitting", "embed": "embedding", "store": "saving", "done": "done"}
STATUS_STYLE = {"added": st.success, "replaced": st.success, "skipped": st.info, "failed": st.error}

db = database()
st.title("Documents")
collection = collection_picker(db)
tab_labels = ["Upload", f"Library ({collection.document_count})", "Search"]
# The Library label carries a count, and a tab whose labels change would reopen on Upload: keep the open one.
open_tab = str(st.session_state.get("documents_tab", "")).split(" (")[0]
upload_tab, library_tab, search_tab = st.tabs(
    tab_labels,
    key="documents_tab",
    on_change="rerun",
    default=next((t for t in tab_labels if t.split(" (")[0] == open_tab), None),
)

with upload_tab:
    with st.form("upload", clear_on_submit=True):
        limits = get_settings()
        files = st.file_uploader(
            "Add documents",
            type=sorted({ext.lstrip(".") for ext in SUPPORTED_TYPES}),
            accept_multiple_files=True,
            help=f"At most {limits.max_upload_mb:g} MB per file, PDFs of at most {limits.max_pdf_pages:,} pages. "
            "A file that is damaged, disguised as another type or built to exhaust the reader is refused with the reason.",
        )
        replace = st.checkbox("Replace documents with the same name", help="Otherwise a new version is skipped.")
        submitted = st.form_submit_button("Add to collection", type="primary", key="add_documents")
    for status, message in st.session_state.pop("upload_outcomes", []):
        STATUS_STYLE[status](literal(message))  # names the file, and a parser's complaint about it
    if submitted and not files:
        st.warning("Choose one or more files first.")
    if submitted and files:
        bars = [st.progress(0.0, text=f"{literal(file.name)}: waiting") for file in files]
        outcomes = ingest_files(
            db,
            collection.name,
            [(file.name, file.getvalue) for file in files],
            replace=replace,
            progress=lambda i, stage, fraction: bars[i].progress(fraction, text=f"{literal(files[i].name)}: {STAGES[stage]}"),
        )
        for bar in bars:
            bar.empty()
        # Rerun so the Library count, the table and the sidebar include the new documents; the messages follow.
        st.session_state["upload_outcomes"] = [(outcome.status, outcome.message) for outcome in outcomes]
        st.rerun()

with library_tab:
    documents = list_documents(db, collection.name)
    if not documents:
        st.info("No documents in this collection yet: add some in the Upload tab.")
    else:
        st.dataframe(
            documents_table(documents),
            hide_index=True,
            width="stretch",
            column_config={"pages": st.column_config.TextColumn(alignment="right")},  # "—" when a file has no pages
        )
        chosen = st.selectbox(
            "Document", documents, format_func=lambda d: f"{d.filename} · {plural(d.chunk_count, 'chunk')}", key="chosen_document"
        )
        with st.expander(f"Chunks of {literal(chosen.filename)}"):
            for chunk in document_chunks(db, chosen.id, limit=100):
                where = f"page {chunk.page}" if chunk.page else literal(chunk.heading or "")
                st.caption(
                    f"#{chunk.ordinal + 1} · {where} · {plural(chunk.token_count, 'token')} · chars {chunk.char_start}–{chunk.char_end}"
                )
                st.text(chunk.text)
            if chosen.chunk_count > 100:
                st.caption(f"First 100 of {plural(chosen.chunk_count, 'chunk')}.")
        with st.popover("Delete document", icon=":material/delete:"):
            st.markdown(f"Delete **{literal(chosen.filename)}** and its {plural(chosen.chunk_count, 'chunk')}?")
            if st.button("Delete", type="primary", key="confirm_delete_document"):
                with user_errors():  # deleted meanwhile in another tab
                    delete_document(db, chosen.id)
                    st.toast(f"Deleted {literal(chosen.filename)}")
                    st.rerun()

    # A job of its own: a page refresh or an app restart finds it again; its view sits outside the expander.
    reembedding = tracked_jobs(db, kind="reembed", target_key="collection", state_key="reembed_jobs").get(collection.name)
    with st.expander("Collection settings"):
        st.markdown(
            f"Embedding model {code(collection.embedding_model)} ({collection.embedding_dim} dimensions) · "
            f"chunks of {plural(collection.chunk_tokens, 'token')}, overlap {collection.chunk_overlap}"
        )
        new_model = st.text_input("Re-embed with another model", placeholder="sentence-transformers id or folder")
        busy = reembedding is not None and not reembedding.finished
        if st.button("Re-embed collection", disabled=not new_model or busy, key="reembed_collection"):
            with user_errors():
                start_tracking(db, submit_reembed(db, collection.name, new_model), "reembed_jobs")
                st.rerun()
        reranker = collection_reranker(db, collection.name)
        st.markdown(f"Reranker: {code(reranker) if reranker else 'none (the fused order)'}")
        new_reranker = st.text_input("Rerank results with a cross-encoder", placeholder="cross-encoder folder or id in the cache",
                                     key="rerank_model", help="Rescores the best hits of every search and RAG answer "
                                     "(docs/models.md, Reranking). Costs ~3–40 ms per candidate on a CPU.")
        left, right = st.columns(2)
        if left.button("Use this reranker", disabled=not new_reranker, key="set_reranker"):
            with user_errors():
                set_collection_reranker(db, collection.name, new_reranker)
                st.rerun()
        if right.button("Turn reranking off", disabled=reranker is None, key="reranker_off"):
            with user_errors():
                set_collection_reranker(db, collection.name, None)
                st.rerun()
        with st.popover("Delete collection", icon=":material/delete_forever:"):
            st.markdown(f"Delete **{literal(collection.name)}** and its {plural(collection.document_count, 'document')}?")
            if st.button("Delete collection", type="primary", key="confirm_delete_collection"):
                with user_errors():
                    delete_collection(db, collection.name)
                    st.rerun()
    if reembedding is not None:
        st.markdown(f"**Re-embed with** {code(reembedding.params['embedding_model'])}")
        job_view(db, reembedding.id, on_finish=lambda job: st.success(literal((job.result or {}).get("message", "Re-embedded."))))

with search_tab:
    with st.form("search"):
        query = st.text_input("Search the collection", placeholder="Ask in your own words", key="search_query")
        left, right = st.columns(2)
        mode = left.radio("Mode", SEARCH_MODES, horizontal=True, help="Hybrid fuses vector and keyword rankings.")
        k = right.slider("Passages", 1, 20, 5)
        searched = st.form_submit_button("Search", type="primary", key="run_search")
    if searched:
        with user_errors():
            hits = search(db, query, collection=collection.name, k=k, mode=mode)
            if not hits:
                st.info("No passages found. Try other words, or the vector mode for meaning rather than exact words.")
            for rank, hit in enumerate(hits, start=1):
                with st.container(border=True):
                    st.markdown(f"**[{rank}] {literal(hit.filename)}** · {literal(hit_location(hit))}")
                    st.caption(hit_scores(hit))
                    st.text(hit.text)
