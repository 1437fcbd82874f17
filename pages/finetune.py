"""Fine-tune: start a LoRA or QLoRA job on a training set, watch it live, keep the adapters."""

from datetime import datetime
from functools import partial
from pathlib import Path

import streamlit as st

from core.config import get_settings
from core.datasets import list_datasets
from core.formatting import human_size
from core.jobs.queue import list_jobs
from core.jobs.worker import ensure_local_worker
from core.models import PRESETS as MODEL_PRESETS
from core.models.adapters import adapter_record, list_adapters, zip_adapter
from core.models.gguf_export import submit_gguf_export
from core.models.merge_job import submit_merge
from core.training.spec import PRESETS, TrainingSettings
from core.training.submit import JobPlan, plan_job, submit_job
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.jobs import job_view, steps_done
from core.ui.resources import database
from core.ui.safe_text import code, literal
from core.ui.tracked_jobs import start_tracking, tracked_jobs
from core.ui.training import settings_form

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

settings = get_settings()
db = database()
st.title("Fine-tune")
# Start switches to the Jobs tab: a widget's state cannot be set once it exists, so through `default`.
new_tab, jobs_tab, adapters_tab = st.tabs(["New job", "Jobs", "Adapters"], key="finetune_tab", on_change="rerun",
                                          default=st.session_state.pop("ft_open_tab", None) or st.session_state.get("finetune_tab"))


@st.cache_data(ttl=600, max_entries=32, show_spinner="Measuring the training set in the base model's tokens…")
def cached_plan(dataset: str, dataset_version: tuple, base_model: str, method: str, training_settings: dict) -> JobPlan:
    """plan_job tokenizes the whole training set: once per dataset version (id, creation time, example
    counts), model, method and settings, not on every rerun. Start checks everything again, uncached;
    the ttl refreshes the free memory the estimate compares with."""
    return plan_job(database(), dataset=dataset, base_model=base_model, method=method,
                    settings=TrainingSettings.from_dict(training_settings))


def new_job() -> None:
    infos = {d.name: d for d in list_datasets(db)}
    datasets = list(infos)
    if not datasets:
        st.info("No training data yet: create a training set on the Training data page first.")
    else:
        left, right = st.columns(2)
        dataset = left.selectbox("Training set", datasets, key="ft_dataset")
        model_ids = [p.model_id for p in MODEL_PRESETS]
        base_model = right.selectbox("Base model", [*model_ids, "Other…"], key="ft_model",
                                     format_func=lambda m: next((p.label for p in MODEL_PRESETS if p.model_id == m), m))
        if base_model == "Other…":
            base_model = right.text_input("Model id or folder", key="ft_model_other")
        preset_name = st.radio("Preset", list(PRESETS), horizontal=True, key="ft_preset",
                               captions=[p.description for p in PRESETS.values()])
        preset = PRESETS[preset_name]
        method = st.radio("Method", ["lora", "qlora"], index=["lora", "qlora"].index(preset.method), horizontal=True,
                          key=f"ft_method_{preset_name}", format_func=lambda m: {"lora": "LoRA", "qlora": "QLoRA (4-bit)"}[m])
        with st.expander("Settings", expanded=False):
            training_settings = settings_form(preset.settings, key=f"ft_{preset_name}")
        adapter_name = st.text_input("Adapter name", value=f"{dataset}-{method}-{datetime.now():%m%d-%H%M}",
                                     key="ft_adapter_name", help="The Ask page lists the adapter under this name.")
        info = infos[dataset]
        version = (info.id, info.created_at.isoformat(), info.train_count, info.validation_count)
        with user_errors():
            plan = cached_plan(dataset, version, base_model, method, training_settings.to_dict())
            e = plan.estimate
            st.caption(f"Estimate: {e.steps} steps on the {e.device}, about {e.seconds / 60:.0f} min, "
                       f"peak memory about {human_size(e.peak_memory_bytes)} of {human_size(e.available_memory_bytes)} free "
                       f"({plan.examples} examples, {plan.mean_tokens:.0f} tokens on average).")
            if e.warning:
                st.warning(e.warning)
            if plan.length_warning:
                st.warning(plan.length_warning)
            if st.button("Start", type="primary", key="ft_start", icon=":material/rocket_launch:"):
                job = submit_job(db, adapter_name=adapter_name, dataset=dataset, base_model=base_model,
                                 method=method, settings=training_settings)
                ensure_local_worker(db)
                st.session_state["ft_selected_job"] = job.id
                st.session_state["ft_open_tab"] = "Jobs"
                st.rerun()



def jobs() -> None:
    all_jobs = list_jobs(db, kind="train")
    if not all_jobs:
        st.info("No jobs yet: start one in the New job tab.")
    else:
        st.dataframe(
            [{"id": j.id, "status": j.status, "adapter": j.adapter_name, "method": j.method, "dataset": j.dataset_name,
              "step": steps_done(j),
              "started": j.started_at.strftime("%Y-%m-%d %H:%M") if j.started_at else "", "host": j.host or ""}
             for j in all_jobs],
            hide_index=True, width="stretch",
        )
        ids = [j.id for j in all_jobs]
        if st.session_state.get("ft_selected_job") not in ids:
            st.session_state["ft_selected_job"] = ids[0]
        chosen = st.selectbox("Job", ids, key="ft_selected_job",
                              format_func=lambda i: next(f"#{j.id} {j.adapter_name}" for j in all_jobs if j.id == i))
        job_view(db, chosen)



def adapters() -> None:
    found = list_adapters(db)
    if not found:
        st.info("Adapters appear here when a job succeeds; the Ask page can use them at once.")
    merges = tracked_jobs(db, kind="merge", target_key="adapter", state_key="ft_merge_jobs")
    for adapter in found:
        record = adapter_record(db, adapter.name)
        with st.container(border=True):
            st.markdown(f"**{literal(adapter.name)}** · base {code(adapter.base_model)}")
            metrics = record.get("metrics") or {}
            if metrics:
                st.caption(" · ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float)))
            left, right = st.columns(2)
            # A callable: the zip is built only when this button is clicked, not for every adapter on every rerun.
            left.download_button("Download (zip)", data=partial(zip_adapter, db, adapter.name), file_name=f"{adapter.name}.zip",
                                 mime="application/zip", key=f"download_{adapter.name}", icon=":material/download:")
            merge = merges.get(adapter.name)  # a merge or a GGUF export (a merge job too): one at a time
            if right.button("Merge into the base model and export", key=f"merge_{adapter.name}",
                            disabled=merge is not None and not merge.finished):
                with user_errors():  # a job of its own: a page refresh or an app restart finds it again
                    start_tracking(db, submit_merge(db, adapter.name), "ft_merge_jobs")
                    st.rerun()
            if right.button("Export as GGUF (merged, 4-bit, for Ollama and llama.cpp)", key=f"gguf_{adapter.name}",
                            disabled=merge is not None and not merge.finished):
                with user_errors():
                    start_tracking(db, submit_gguf_export(db, adapter.name, "q4_0"), "ft_merge_jobs")
                    st.rerun()
            if merge is not None:
                job_view(db, merge.id, on_finish=offer_gguf if merge.params.get("gguf") else show_merged)


def show_merged(job) -> None:
    where = f" on {job.host}" if job.host else ""
    st.success(f"Merged model (safetensors) saved in {code(str((job.result or {}).get('output')))}{literal(where)}.")


def offer_gguf(job) -> None:
    path = Path((job.result or {}).get("output") or "")
    if not path.is_file():  # written by a worker on another machine, or removed since
        st.info(f"The GGUF file was saved in {code(str(path))}{literal(f' on {job.host}' if job.host else '')}.")
        return
    # A callable: the file is read only when the button is clicked.
    st.download_button(f"Download {path.name}", data=path.read_bytes, file_name=path.name,
                       mime="application/octet-stream", key=f"gguf_download_{job.id}", icon=":material/download:")


# Only the open tab runs: the estimate reads the model's config and the data, the job view polls.
for tab, render in ((new_tab, new_job), (jobs_tab, jobs), (adapters_tab, adapters)):
    if tab.open:
        with tab:
            render()
