"""Advisor: RAG, fine-tuning or both for these documents, from a few questions and the evaluation runs."""

import streamlit as st

from core.evaluation.advisor import advise, scored_exams
from core.ui.advisor import advisor_questions, render_advice
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.guide import page_link
from core.ui.resources import database

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

db = database()
st.title("Advisor")
st.caption("The classic guide turned into a few questions; once evaluation runs exist, their measured differences "
           "(with 95% intervals), latency and training cost weigh more than the answers.")

questions, advice_column = st.columns([2, 3], gap="large")
with questions:
    st.subheader("Your case")
    answers = advisor_questions()
    exams = scored_exams(db)
    exam = st.selectbox("Exam to weigh", exams, key="advisor_exam", help="Evaluation runs on this exam are weighed.") if exams else None
with advice_column:
    with user_errors(stop=True):
        advice = advise(db, answers, exam=exam)
    render_advice(advice)
    page_link("pages/evaluation.py", "Evaluation runs: scores, intervals, answers", ":material/analytics:",
              fallback="Evaluation runs: `python -m core eval --exam NAME --variants base,rag`")
    page_link("pages/compare.py", "Compare the variants side by side", ":material/compare:")
