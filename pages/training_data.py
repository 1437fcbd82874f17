"""Training data: import question/answer files or generate pairs from a collection, check them,
edit or drop examples, and see the train/validation split that fine-tuning will use."""

import json

import streamlit as st

from core.config import get_settings
from core.datasets import (
    delete_dataset,
    delete_examples,
    list_datasets,
    list_examples,
    preview_dataset,
    save_dataset,
    update_example,
)
from core.datasets.generation_job import submit_generate_dataset
from core.documents.library import list_collections
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.jobs import job_view
from core.ui.resources import database
from core.ui.safe_text import literal
from core.ui.tracked_jobs import start_tracking, tracked_jobs

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

settings = get_settings()
db = database()
st.title("Training data")
import_tab, generate_tab, browse_tab = st.tabs(["Import a file", "Generate from documents", "Browse and edit"],
                                               key="training_data_tab", on_change="rerun")


def import_file() -> None:
    st.caption("JSONL, JSON or CSV with chat `messages`, Alpaca `instruction`/`input`/`output`, or `prompt`/`completion`.")
    upload = st.file_uploader("Training file", type=["jsonl", "json", "csv"], key="td_file",
                              help=f"At most {settings.max_upload_mb:g} MB (EXPERT_STUDIO_MAX_UPLOAD_MB).")
    max_tokens = st.number_input("Longest example (tokens, chat template included)", 32, 32768, 1024, 32, key="td_max")
    if upload is None:
        return
    with user_errors() as caught:
        preview = preview_dataset(upload.name, upload.getvalue(), max_tokens=int(max_tokens))
    if caught.error:
        return
    # The file's name, its field names and its rows' text are the file's: shown as written, never as Markdown.
    st.markdown(literal(preview.summary))
    for note in preview.notes:
        st.info(literal(note))
    if preview.problems:
        st.warning("Rows that will not be saved:\n\n" + "  \n".join(map(literal, preview.problem_list(limit=50).splitlines())))
    lengths = preview.lengths
    if lengths.count:
        st.caption(f"Tokens per example: min {lengths.min}, median {lengths.p50}, p90 {lengths.p90}, p95 {lengths.p95}, "
                   f"max {lengths.max} (limit {preview.max_tokens})")
        st.bar_chart({"tokens": lengths.lengths}, x_label="example", y_label="tokens", height=180)
    st.dataframe([{"row": e.row, "tokens": e.tokens, **{m["role"]: m["content"] for m in e.messages}}
                  for e in preview.examples[:20]], hide_index=True, width="stretch")
    name = st.text_input("Dataset name", value=upload.name.rsplit(".", 1)[0], key="td_import_name")
    skip = st.checkbox(f"Save without the {len(preview.problems)} bad rows", key="td_skip") if preview.problems else False
    if st.button("Save dataset", type="primary", key="td_save", disabled=not preview.examples):
        with user_errors():
            info = save_dataset(db, name, preview, skip_bad_rows=skip)
            st.success(f"Saved {literal(repr(info.name))}: {info.train_count} train and {info.validation_count} validation examples.")


KINDS = {"question/answer pairs": "qa", "plain text (continued pre-training)": "text",
         "RAFT (question + source among distractors)": "raft"}


def _default_name() -> None:
    """Another collection or kind: the name field shows its default for them again."""
    st.session_state.pop("td_generate_name", None)


def generate() -> None:
    collections = [c.name for c in list_collections(db) if c.document_count]
    if not collections:
        st.info("Upload documents on the Documents page first: pairs are written from their passages.")
        return
    collection = st.selectbox("Collection", collections, key="td_collection", on_change=_default_name)
    kind = st.radio("Make", list(KINDS), horizontal=True, key="td_kind", on_change=_default_name,
                    help="Pairs are written by the language model from each passage; plain text uses the passages as they are; "
                         "RAFT asks a Q/A dataset's questions again with their source passage among distractors, in the "
                         "prompt RAG uses, to train the adapter for fine-tuned + RAG.")
    options: dict = {}
    if KINDS[kind] == "raft":
        pairs = [d.name for d in list_datasets(db) if d.kind == "chat" and d.collection == collection]
        if not pairs:
            st.info("Generate question/answer pairs from this collection first: RAFT asks their questions again.")
            return
        options["from_dataset"] = st.selectbox("Question/answer dataset", pairs, key="td_raft_from")
        left, right = st.columns(2)
        options["distractors"] = int(left.number_input("Distractor passages per question", 0, 20, 3, key="td_raft_distractors"))
        options["oracle_fraction"] = right.slider("Share with the source passage", 0.0, 1.0, 0.8, 0.05, key="td_raft_oracle",
                                                  help="The others hold distractors only, as in RAFT.")
    else:
        options["max_chunks"] = int(st.number_input("Passages to use (spread over the collection)", 1, 100_000, 20,
                                                    key="td_chunks"))
    name = st.text_input("Dataset name", value=f"{collection}-{KINDS[kind]}", key="td_generate_name")
    if st.button("Generate", type="primary", key="td_generate"):
        with user_errors():  # a job of its own: a page refresh or an app restart finds it below again
            job = submit_generate_dataset(db, name=name, collection=collection, kind=KINDS[kind], **options)
            start_tracking(db, job, "td_generate_jobs")
    job = tracked_jobs(db, kind="generate-dataset", target_key="collection", state_key="td_generate_jobs").get(collection)
    if job is not None:
        job_view(db, job.id, on_finish=show_generated)


def show_generated(job) -> None:
    result = job.result or {}
    st.success(f"Dataset {literal(repr(result.get('dataset')))} saved: {result.get('examples', 0):,} examples "
               f"({result.get('train', 0):,} train, {result.get('validation', 0):,} validation).")
    st.caption(f"{literal(result.get('message', ''))} Review them in *Browse and edit*.")
    st.page_link("pages/finetune.py", label="Fine-tune on it", icon=":material/model_training:")


def browse() -> None:
    datasets = list_datasets(db)
    if not datasets:
        st.info("No training sets yet: import a file or generate one.")
        return
    st.dataframe([{"name": d.name, "kind": d.kind, "source": d.source, "train": d.train_count,
                   "validation": d.validation_count, "collection": d.collection} for d in datasets],
                 hide_index=True, width="stretch")
    chosen = st.selectbox("Training set", [d.name for d in datasets], key="td_browse")
    examples = list_examples(db, chosen, limit=200)
    st.caption("Edit an example's JSON and save it, or tick examples and drop them. "
               "The split keeps every document on one side only.")
    for example in examples:
        source = example.filename or (f"line {example.source_row}" if example.source_row else "")
        with st.expander(f"#{example.ordinal + 1} · {example.split} · {literal(source)}"):
            if example.messages is not None:
                edited = st.text_area("Messages (JSON)", json.dumps(example.messages, indent=1, ensure_ascii=False),
                                      key=f"td_edit_{example.id}", height=160)
                if st.button("Save", key=f"td_save_{example.id}"):
                    with user_errors("Not saved: "):
                        update_example(db, example.id, edited)
                        st.toast("Saved")
            else:
                st.text(example.text)
            st.checkbox("Drop this example", key=f"td_drop_{example.id}")
    marked = [e.id for e in examples if st.session_state.get(f"td_drop_{e.id}")]
    left, right = st.columns(2)
    if left.button(f"Drop {len(marked)} marked examples", disabled=not marked, key="td_drop"):
        delete_examples(db, marked)
        st.rerun()
    with right.popover("Delete training set", icon=":material/delete:"):
        if st.button(f"Delete {literal(repr(chosen))}", type="primary", key="td_delete"):
            delete_dataset(db, chosen)
            st.rerun()


for tab, render in ((import_tab, import_file), (generate_tab, generate), (browse_tab, browse)):
    if tab.open:
        with tab:
            render()
