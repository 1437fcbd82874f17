"""Exams: the questions with reference answers that evaluation runs score the variants on. Import a
file, or draft one from held-out documents as a job; review and edit the questions; export, delete."""

import pandas as pd
import streamlit as st

from core.config import get_settings
from core.documents.library import list_collections
from core.evaluation.exam_job import submit_generate_exam
from core.evaluation.exams import (
    DEFAULT_EXAM_QUESTIONS,
    DEFAULT_HELDOUT_FRACTION,
    MAX_EXAM_BYTES,
    OUT_OF_SCOPE_QUESTIONS,
    delete_exam,
    export_exam,
    get_exam,
    list_exams,
    preview_exam,
    save_exam,
    save_question_edits,
)
from core.formatting import human_size, plural
from core.models import PRESETS
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.jobs import job_view
from core.ui.resources import database
from core.ui.safe_text import literal
from core.ui.tracked_jobs import start_tracking, tracked_jobs

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

settings = get_settings()
db = database()
st.title("Exams")
st.caption("Questions with reference answers, each linked to the document it is about. The documents an exam asks "
           "about are left out of training data generated from the same collection, and an adapter trained on them "
           "is refused for the exam.")
import_tab, generate_tab, browse_tab = st.tabs(["Import a file", "Generate from documents", "Browse and edit"],
                                               key="exams_tab", on_change="rerun")
collections = [c.name for c in list_collections(db) if c.document_count]


def import_file() -> None:
    if not collections:
        st.info("Upload documents on the Documents page first: an exam asks about a collection's documents.")
        return
    st.caption("JSONL, JSON or CSV with `question` and `reference_answer` (or `answer`), optionally `source_document` "
               "(a file name in the collection), `source_passage` (text from it) and `out_of_scope` (true/false).")
    collection = st.selectbox("Collection the exam asks about", collections, key="exam_import_collection")
    upload = st.file_uploader("Exam file", type=["jsonl", "json", "csv", "tsv"], key="exam_file",
                              help=f"At most {human_size(MAX_EXAM_BYTES)}.")
    if upload is None:
        return
    with user_errors() as caught:
        preview = preview_exam(db, upload.name, upload.getvalue(), collection=collection)
    if caught.error:
        return
    # The file's name, its field names and its rows' text are the file's: shown as written, never as Markdown.
    st.markdown(literal(preview.summary))
    for note in preview.notes:
        st.info(literal(note))
    if preview.problems:
        st.warning("Rows that will not be saved:\n\n" + "  \n".join(map(literal, preview.problem_list(limit=50).splitlines())))
    st.dataframe([{"line": q.source_row, "question": q.question, "reference answer": q.reference_answer,
                   "out of scope": q.out_of_scope, "document": q.source_document, "passage found": q.chunk_id is not None}
                  for q in preview.questions[:20]], hide_index=True, width="stretch")
    name = st.text_input("Exam name", value=upload.name.rsplit(".", 1)[0], key="exam_import_name")
    skip = st.checkbox(f"Save without the {len(preview.problems)} bad rows", key="exam_skip") if preview.problems else False
    if st.button("Save exam", type="primary", key="exam_save", disabled=not preview.questions):
        with user_errors():
            info = save_exam(db, name, preview, skip_bad_rows=skip)
            st.success(f"Saved exam {literal(repr(info.name))}: {plural(info.question_count, 'question')} "
                       f"({info.out_of_scope_count} out of scope).")


def generate() -> None:
    if not collections:
        st.info("Upload documents on the Documents page first: questions are written from their passages.")
        return
    collection = st.selectbox("Collection", collections, key="exam_gen_collection")
    models = list(dict.fromkeys([settings.language_model, *(p.model_id for p in PRESETS)]))
    left, right = st.columns(2)
    model = left.selectbox("Model that writes the questions", models, key="exam_gen_model",
                           help="A large model on a GPU writes good questions; a small one on the CPU writes drafts to edit.")
    fraction = right.slider("Documents held out for the exam", 0.05, 0.9, DEFAULT_HELDOUT_FRACTION, 0.05, key="exam_gen_fraction",
                            help="Drawn at random (seeded); at least one, never all. Training data leaves them out.")
    left, middle, right = st.columns(3)
    questions = left.number_input("Questions (one per passage)", 1, 1000, DEFAULT_EXAM_QUESTIONS, key="exam_gen_questions")
    out_of_scope = middle.number_input("Out-of-scope questions", 0, len(OUT_OF_SCOPE_QUESTIONS), 0, key="exam_gen_oos",
                                       help='Generic questions the documents cannot answer; the right answer is "The documents do not say."')
    seed = right.number_input("Seed (which documents)", 0, 2**31 - 1, 0, key="exam_gen_seed")
    name = st.text_input("Exam name", value=f"{collection}-exam", key="exam_gen_name")
    if st.button("Generate", type="primary", key="exam_generate"):
        with user_errors():  # a job of its own: a page refresh or an app restart finds it below again
            job = submit_generate_exam(db, name=name, collection=collection, model_id=model, heldout_fraction=float(fraction),
                                       questions=int(questions), out_of_scope=int(out_of_scope), seed=int(seed))
            start_tracking(db, job, "exam_generate_jobs")
    job = tracked_jobs(db, kind="generate-exam", target_key="collection", state_key="exam_generate_jobs").get(collection)
    if job is not None:
        job_view(db, job.id, on_finish=show_generated)


def show_generated(job) -> None:
    result = job.result or {}
    st.success(f"Exam {literal(repr(result.get('exam')))} saved: {result.get('questions', 0):,} questions "
               f"and {result.get('out_of_scope', 0):,} out of scope.")
    st.caption(f"{literal(result.get('message', ''))} Review and edit them in *Browse and edit*.")


def browse() -> None:
    exams = list_exams(db)
    if not exams:
        st.info("No exams yet: import a file or generate one.")
        return
    st.dataframe([{"name": e.name, "collection": e.collection, "source": e.source, "questions": e.question_count,
                   "out of scope": e.out_of_scope_count, "documents": e.document_count, "runs": e.run_count} for e in exams],
                 hide_index=True, width="stretch")
    chosen = st.selectbox("Exam", [e.name for e in exams], key="exam_browse")
    exam = get_exam(db, chosen)
    if exam.info.run_count:
        st.warning(f"{exam.info.run_count} evaluation runs used this exam: an edit changes what their scores mean.")
    st.caption("Edit the questions, reference answers and the out-of-scope flag, tick rows to delete, then save.")
    version = st.session_state.get("exam_editor_version", 0)  # a new editor after a save: its old edits are applied
    edited = st.data_editor(
        pd.DataFrame([{"id": q.id, "question": q.question, "reference answer": q.reference_answer,
                       "out of scope": q.out_of_scope, "document": q.source_document, "delete": False} for q in exam.questions]),
        key=f"exam_editor_{exam.id}_{version}", hide_index=True, width="stretch", num_rows="fixed",
        disabled=["id", "document"], column_config={"id": None},
    )
    left, middle, right = st.columns(3)
    if left.button("Save edits", type="primary", key="exam_save_edits"):
        with user_errors():
            changed, deleted = save_question_edits(db, exam.name, [
                {"id": int(row["id"]), "question": row["question"], "reference_answer": row["reference answer"],
                 "out_of_scope": bool(row["out of scope"]), "delete": bool(row["delete"])}
                for row in edited.to_dict("records")])
            st.session_state["exam_editor_version"] = version + 1
            st.toast(f"Saved: {changed} changed, {deleted} deleted.")
            st.rerun()
    middle.download_button("Export (JSONL)", export_exam(db, exam.name), file_name=f"{exam.name}.jsonl",
                           mime="application/jsonl", key="exam_export")
    with right.popover("Delete exam", icon=":material/delete:"):
        st.caption("Its questions and the evaluation runs on it go too.")
        if st.button(f"Delete {literal(repr(exam.name))}", type="primary", key="exam_delete"):
            delete_exam(db, exam.name)
            st.rerun()


for tab, render in ((import_tab, import_file), (generate_tab, generate), (browse_tab, browse)):
    if tab.open:
        with tab:
            render()
