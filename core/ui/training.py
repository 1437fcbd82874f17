"""Widgets of the Fine-tune page: the settings form (built from TrainingSettings and its help text)
and the live view of one job."""

from __future__ import annotations

from dataclasses import fields

import streamlit as st

from core.db import Database
from core.jobs.queue import cancel_job, get_job, job_log_tail, job_metrics, resume_job
from core.training.spec import TrainingSettings


def settings_form(defaults: TrainingSettings, key: str) -> TrainingSettings:
    """One input per setting, three to a row, each with the setting's own help text."""
    values = {}
    columns = st.columns(3)
    for index, f in enumerate(fields(TrainingSettings)):
        column = columns[index % 3]
        label = f.name.replace("_", " ").capitalize()
        default = getattr(defaults, f.name)
        widget_key = f"{key}_{f.name}"
        meta = f.metadata
        if isinstance(default, bool):
            values[f.name] = column.checkbox(label, value=default, help=meta["help"], key=widget_key)
        elif "choices" in meta:
            values[f.name] = column.selectbox(label, meta["choices"], index=meta["choices"].index(default),
                                              help=meta["help"], key=widget_key)
        elif isinstance(default, int):
            values[f.name] = int(column.number_input(label, min_value=meta["min"], max_value=meta["max"], value=default,
                                                     step=1, help=meta["help"], key=widget_key))
        elif isinstance(default, float):
            values[f.name] = float(column.number_input(label, min_value=float(meta["min"]), max_value=float(meta["max"]),
                                                       value=default, help=meta["help"], key=widget_key,
                                                       format="%.6g"))
        else:
            values[f.name] = column.text_input(label, value=default, help=meta["help"], key=widget_key)
    return TrainingSettings(**values)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def job_view(db: Database, job_id: int) -> None:
    """Progress, loss chart, log tail and controls; refreshes itself while the job is active."""
    job = get_job(db, job_id)

    @st.fragment(run_every=2.0 if not job.finished else None)
    def live() -> None:
        current = get_job(db, job_id)
        if current.finished and not job.finished:
            st.rerun()  # stop polling: the whole page redraws the finished job once
        progress = current.progress or {}
        step, total = progress.get("step", 0), progress.get("max_steps") or 0
        status_line = {"queued": "Waiting for a worker…", "running": "Training", "succeeded": "Finished",
                       "failed": "Failed", "cancelled": "Cancelled"}[current.status]
        fraction = min(step / total, 1.0) if total else (1.0 if current.status == "succeeded" else 0.0)
        eta = f" · about {_duration(progress.get('eta_seconds'))} left" if current.status == "running" and total else ""
        st.progress(fraction, text=f"{status_line}: step {step} of {total or '?'}{eta}")
        if current.status == "failed" and current.error:
            st.error(current.error)
        elif current.status == "cancelled":
            st.info(current.error or "Cancelled.")

        metrics = job_metrics(db, job_id)
        if metrics:
            chart = {"step": [m["step"] for m in metrics],
                     "loss": [m["loss"] for m in metrics],
                     "eval loss": [m["eval_loss"] for m in metrics]}
            st.line_chart(chart, x="step", y=["loss", "eval loss"], x_label="step", y_label="loss", height=260)
            last = next((m for m in reversed(metrics) if m["loss"] is not None), metrics[-1])
            parts = [f"loss {last['loss']:.4f}" if last["loss"] is not None else None,
                     f"lr {last['learning_rate']:.2e}" if last["learning_rate"] else None,
                     f"{last['tokens_per_second']:.0f} tokens/s" if last["tokens_per_second"] else None,
                     f"peak memory {last['memory_mb']:,.0f} MB" if last["memory_mb"] else None]
            st.caption(" · ".join(p for p in parts if p))
        st.code("\n".join(job_log_tail(db, job_id, 25)) or "(no output yet)", language=None)

    live()
    left, right = st.columns(2)
    if not job.finished and left.button("Cancel job", key=f"cancel_job_{job_id}", icon=":material/stop:"):
        cancel_job(db, job_id)
        st.rerun()
    if job.status in ("failed", "cancelled") and right.button("Resume job", key=f"resume_job_{job_id}",
                                                              icon=":material/play_arrow:"):
        from core.jobs.worker import ensure_local_worker

        resume_job(db, job_id)
        ensure_local_worker(db)
        st.rerun()
