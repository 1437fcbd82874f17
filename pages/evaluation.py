"""Evaluation: an exam answered by base, RAG, fine-tuned and both as a job, then the scores with
intervals, verdicts, diagnoses, each question's answers, a comparison with an earlier run, exports."""

from functools import partial

import streamlit as st

from core.config import get_settings
from core.documents.library import list_collections
from core.evaluation.exams import list_exams
from core.evaluation.results import (
    compare_runs,
    earlier_run,
    leakage_note,
    list_runs,
    load_results,
    question_details,
    question_list,
    runs_table,
    to_csv,
    to_json_text,
)
from core.evaluation.run import DEFAULT_BATCH_SIZE, submit_evaluation
from core.evaluation.variants import LABELS, VARIANTS
from core.models import PRESETS
from core.models.adapters import list_adapters
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.evaluation import render_comparison, render_question, render_summary
from core.ui.jobs import job_view
from core.ui.resources import database
from core.ui.safe_text import literal
from core.ui.tracked_jobs import start_tracking

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

EXAM_COLLECTION = "(the exam's collection)"
NO_ADAPTER = "(none)"
OTHER_MODEL = "Other (Hugging Face id or folder)…"

settings = get_settings()
db = database()
st.title("Evaluation")
# Start switches to the Results tab: a widget's state cannot be set once it exists, so through `default`.
new_tab, results_tab = st.tabs(["New run", "Results"], key="eval_tab", on_change="rerun",
                               default=st.session_state.pop("eval_open_tab", None) or st.session_state.get("eval_tab"))


def new_run() -> None:
    exams = {e.name: e for e in list_exams(db)}
    if not exams:
        st.info("No exams yet: import or generate one on the Exams page (or `python -m core exams import`).")
        return
    left, right = st.columns(2)
    exam = left.selectbox("Exam", list(exams), key="eval_exam", format_func=lambda n: f"{n} ({exams[n].question_count} "
                          "questions" + (f", collection {exams[n].collection})" if exams[n].collection else ")"))
    variants = right.multiselect("Variants", list(VARIANTS), default=["base", "rag"], key="eval_variants",
                                 format_func=lambda v: f"{v}: {LABELS[v]}")
    left, right = st.columns(2)
    adapters = [NO_ADAPTER] + [a.name for a in list_adapters(db)]
    adapter = left.selectbox("Adapter (for ft and rag+ft)", adapters, key="eval_adapter")
    collections = [EXAM_COLLECTION] + [c.name for c in list_collections(db)]
    collection = right.selectbox("Collection (for rag and rag+ft)", collections, key="eval_collection")
    with st.expander("Model and generation settings"):
        preset_ids = [p.model_id for p in PRESETS]
        default = preset_ids.index(settings.language_model) if settings.language_model in preset_ids else len(preset_ids)
        choice = st.selectbox("Model", [*preset_ids, OTHER_MODEL], index=default, key="eval_model",
                              format_func=lambda m: next((p.label for p in PRESETS if p.model_id == m), m))
        model = st.text_input("Model id or folder", value=settings.language_model if default == len(preset_ids) else "",
                              key="eval_model_other") if choice == OTHER_MODEL else choice
        c1, c2 = st.columns(2)
        max_new_tokens = c1.number_input("Max new tokens", 1, 8192, settings.max_new_tokens, 16, key="eval_max_new_tokens")
        batch_size = c2.number_input("Batch size", 1, 256, DEFAULT_BATCH_SIZE, 1, key="eval_batch_size",
                                     help="Questions generated together in one forward pass per token.")
    st.caption("Greedy decoding: a rerun gives the same answers and scores. The job runs in the background; "
               "you can leave this page and come back.")
    if st.button("Start", type="primary", key="eval_start", icon=":material/play_arrow:", disabled=not variants):
        with user_errors():
            run_id, job = submit_evaluation(
                db, exam=exam, variants=variants, model=model, adapter=None if adapter == NO_ADAPTER else adapter,
                collection=None if collection == EXAM_COLLECTION else collection, max_new_tokens=int(max_new_tokens),
                batch_size=int(batch_size),
            )
            start_tracking(db, job, "eval_jobs")
            st.session_state["eval_run"] = run_id
            st.session_state["eval_open_tab"] = "Results"
            st.rerun()


def results() -> None:
    runs = list_runs(db)
    if not runs:
        st.info("No evaluation runs yet: start one in the New run tab.")
        return
    st.dataframe(runs_table(runs), hide_index=True, width="stretch")
    ids = [r.id for r in runs]
    if st.session_state.get("eval_run") not in ids:
        st.session_state["eval_run"] = ids[0]
    run_id = st.selectbox("Run", ids, key="eval_run", format_func=lambda i: next(r.label for r in runs if r.id == i))
    with user_errors(stop=True):
        loaded = load_results(db, run_id)
    run = loaded.run
    if not run.finished and run.job_id is not None:
        job_view(db, run.job_id)
    if not loaded.answers:
        st.info("No answers yet.")
        return
    if not run.finished:
        st.caption("The run is not finished: the table shows the answers stored so far.")
    if leakage_note(run):
        st.warning(literal(leakage_note(run)))
    render_summary(loaded)

    st.subheader("Questions")
    questions = question_list(loaded)
    question = st.selectbox("Question", [q for q, _, _ in questions], key="eval_question",
                            format_func=lambda q: next(f"{o}. {t[:100]}" for i, o, t in questions if i == q))
    render_question(question_details(loaded, question))

    st.subheader("Compared with an earlier run")
    earlier = [r for r in list_runs(db, run.exam) if r.id < run.id and r.finished and set(r.variants) & set(run.variants)]
    if earlier:
        previous = earlier_run(db, run)
        chosen = st.selectbox("Earlier run", [r.id for r in earlier], key=f"eval_earlier_{run.id}",
                              index=[r.id for r in earlier].index(previous.id) if previous else 0,
                              format_func=lambda i: next(r.label for r in earlier if r.id == i))
        render_comparison(compare_runs(db, run.id, chosen))
    else:
        render_comparison(None)

    left, right = st.columns(2)
    # Callables: the files are built only when a button is clicked, not on every rerun.
    left.download_button("Download answers (CSV)", data=partial(to_csv, loaded), file_name=f"evaluation-{run.id}.csv",
                         mime="text/csv", key="eval_csv", icon=":material/download:")
    right.download_button("Download summary and answers (JSON)", data=partial(to_json_text, loaded),
                          file_name=f"evaluation-{run.id}.json", mime="application/json", key="eval_json",
                          icon=":material/download:")


# Only the open tab runs: the results tab reads every answer of the chosen run.
for tab, render in ((new_tab, new_run), (results_tab, results)):
    if tab.open:
        with tab:
            render()
