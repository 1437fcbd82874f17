"""Which job a page shows for what it works on (a collection, an adapter…), found again after a page
refresh or an app restart: the jobs table remembers, the session only adds the jobs it started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from core.db import Database
from core.jobs.queue import Job, list_jobs
from core.jobs.worker import ensure_local_worker

# A finished job stays on its page this long (one this session started stays for the session).
RECENT = timedelta(hours=1)


def start_tracking(db: Database, job: Job, state_key: str) -> Job:
    """After a submit: make sure a worker runs the job, and show it in this session from now on."""
    ensure_local_worker(db)
    st.session_state[state_key] = [*st.session_state.get(state_key, []), job.id]
    return job


def tracked_jobs(db: Database, *, kind: str, target_key: str, state_key: str) -> dict[str, Job]:
    """For each target (the job parameter `target_key`), the newest job of `kind` to show: one
    that is queued or running, finished within RECENT, or started in this session."""
    mine = set(st.session_state.get(state_key, []))
    now = datetime.now(UTC)
    shown: dict[str, Job] = {}
    for job in list_jobs(db, 100, kind=kind):  # newest first
        target = job.params.get(target_key)
        if target is None or target in shown:
            continue
        if job.id in mine or not job.finished or (job.finished_at and now - job.finished_at < RECENT):
            shown[target] = job
    return shown
