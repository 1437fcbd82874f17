"""Expert Studio: the login gate, navigation and the shared sidebar; every page lives in pages/."""

import streamlit as st

from core.db.engine import DatabaseUnavailable
from core.ui.auth import check_access
from core.ui.resources import database
from core.ui.safe_text import literal
from core.ui.sidebar import render_sidebar

st.set_page_config(page_title="Expert Studio", page_icon="🎓", layout="wide")

access = check_access()  # who may see the pages: the listening address, the login, this session
navigation = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/documents.py", title="Documents", icon=":material/description:"),
        st.Page("pages/ask.py", title="Ask", icon=":material/forum:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
        st.Page("pages/training_data.py", title="Training data", icon=":material/dataset:"),
        st.Page("pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
        st.Page("pages/exams.py", title="Exams", icon=":material/quiz:"),
        st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
        st.Page("pages/advisor.py", title="Advisor", icon=":material/recommend:"),
        st.Page("pages/models.py", title="Models", icon=":material/download:"),
    ],
    position="sidebar" if access.admitted else "hidden",
)
access.enforce()  # the refusal or the login form instead of any page, unless admitted
try:
    db = database()
except DatabaseUnavailable as error:  # restarted or unreachable: it says what happened; nothing to configure
    st.error(literal(str(error)))
    st.stop()
except Exception as error:  # the page must explain, not show a traceback
    st.error(literal(f"The database could not be opened: {error}"))
    st.info("Check DATABASE_URL (unset it to use the embedded database) and restart the app.")
    st.stop()
render_sidebar(db)
navigation.run()
