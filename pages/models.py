"""Models: the presets and whether each loads here, and downloads from the Hugging Face Hub as jobs whose
progress survives a page refresh."""

import streamlit as st

from core.models import PRESETS
from core.models.download import ALLOW_DOWNLOADS, copy_in_instructions, hub_offline
from core.models.download_job import KIND, submit_download
from core.models.registry import model_is_available
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.jobs import job_view
from core.ui.resources import database
from core.ui.safe_text import code, literal
from core.ui.tracked_jobs import start_tracking, tracked_jobs

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

db = database()
st.title("Models")
st.write("The language models the app knows, and downloads of any model from the Hugging Face Hub (language, "
         "embedding or reranker) into this machine's Hugging Face cache, where every page finds it by its id.")

st.subheader("Presets")
st.dataframe(
    [{"model": p.model_id, "name": p.label, "here": "✓ loads offline" if model_is_available(p.model_id) else "not here",
      "note": p.note} for p in PRESETS],
    hide_index=True,
)

st.subheader("Download from the Hugging Face Hub")
if hub_offline():
    st.warning(literal(f"HF_HUB_OFFLINE is set, so nothing can be downloaded here. {ALLOW_DOWNLOADS} "
                       + copy_in_instructions("ORG/NAME")))
left, right = st.columns([3, 1])
model_id = left.text_input("Model id", key="download_model_id", placeholder="microsoft/Phi-3-mini-4k-instruct",
                           help="As on the model's Hub page: org/name. A preset's id above works too.")
revision = right.text_input("Revision", value="main", key="download_revision", help="Branch, tag or commit.")
st.caption("Gated models (their licence must be accepted on the Hub first) need HF_TOKEN in the app's environment.")
if st.button("Download", type="primary", key="download_start", icon=":material/download:"):
    with user_errors():
        start_tracking(db, submit_download(db, model_id, revision), "download_jobs")

downloads = tracked_jobs(db, kind=KIND, target_key="model_id", state_key="download_jobs")
for name, job in downloads.items():
    st.markdown(f"**{literal(name)}**")
    job_view(db, job.id, on_finish=lambda job: st.success(
        f"{literal(job.params['model_id'])} is in the Hugging Face cache: {code((job.result or {}).get('path', ''))}"))
