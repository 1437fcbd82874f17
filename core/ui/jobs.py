"""The one live view of a job of any kind: status, progress with ETA, the loss chart where the kind
records metrics, the reason of a failure, the log's tail, and Cancel / Resume."""

from __future__ import annotations

import streamlit as st

from core.db import Database
from core.jobs.queue import Job, cancel_job, get_job, job_log_tail, job_metrics, list_jobs, resume_job
from core.ui.safe_text import safe_markdown

STATUS_WORDS = {"queued": "Waiting for a worker…", "running": "Running", "succeeded": "Finished",
                "failed": "Failed", "cancelled": "Cancelled"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(job: Job) -> tuple[float, str]:
    """(fraction, text) for the progress bar; training jobs of older versions wrote step/max_steps."""
    progress = job.progress or {}
    done = progress.get("done", progress.get("step", 0)) or 0
    total = progress.get("total", progress.get("max_steps")) or 0
    unit = progress.get("unit", "steps")
    fraction = min(done / total, 1.0) if total else (1.0 if job.status == "succeeded" else 0.0)
    if unit == "%":
        amount = f"{done:.0f}%"
    elif unit == "steps":
        amount = f"step {done:g} of {total:g}" if total else f"step {done:g} of ?"
    else:
        amount = f"{done:g} of {total:g} {unit}" if total else ""
    eta = f" · about {duration(progress.get('eta_seconds'))} left" if job.status == "running" and total else ""
    status = "Training" if job.status == "running" and job.kind == "train" else STATUS_WORDS[job.status]
    text = status + (f": {amount}" if amount else "") + eta
    return fraction, text


def steps_done(job: Job) -> str:
    """"done/total" for a table column."""
    progress = job.progress or {}
    done, total = progress.get("done", progress.get("step")), progress.get("total", progress.get("max_steps"))
    return f"{done:g}/{total:g}" if done is not None and total else ""


def job_label(job: Job) -> str:
    return f"#{job.id} {job.title}"


def job_picker(db: Database, *, kind: str | None, key: str, label: str = "Job") -> Job | None:
    """A select box over the recent jobs (of one kind), newest first; None when there are none."""
    jobs = list_jobs(db, 50, kind=kind)
    if not jobs:
        return None
    chosen = st.selectbox(label, jobs, format_func=job_label, key=key)
    return chosen


def job_view(db: Database, job_id: int, *, on_finish=None) -> None:
    """Progress, chart, log tail and controls; refreshes itself while the job is active.
    `on_finish(job)` draws what the finished job produced (a link to its dataset, its adapter...)."""
    job = get_job(db, job_id)

    @st.fragment(run_every=2.0 if not job.finished else None)
    def live() -> None:
        current = get_job(db, job_id)
        if current.finished and not job.finished:
            st.rerun()  # stop polling: the whole page redraws the finished job once
        fraction, text = progress_line(current)
        st.progress(fraction, text=safe_markdown(text))  # titles and errors quote user-given names
        if current.status == "failed" and current.error:
            st.error(safe_markdown(current.error))
        elif current.status == "cancelled":
            st.info(safe_markdown(current.error or "Cancelled."))

        metrics = job_metrics(db, job_id) if current.kind == "train" else []
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
    if job.status == "succeeded" and on_finish is not None:
        on_finish(job)
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
