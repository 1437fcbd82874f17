"""Jobs as rows in Postgres: queue, claim (SKIP LOCKED), ownership, progress, cancel, resume, and the
metrics and log lines that let any page show a job the same way wherever it runs.

Ownership: every claim gives the job a new `owner` token. Each write of a running job (heartbeat,
progress, metrics, log lines, its ending) is conditioned on that token, so an attempt that was
declared dead, or whose job was claimed again, changes nothing and learns that it must stop.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from core.db import Database
from core.jobs.errors import JobError, LostOwnership
from core.jobs.kinds import EXCLUSIVE_KINDS, job_kind

__all__ = ["Job", "JobError", "LostOwnership"]

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
# A running job whose worker has not reported for this long is dead (SIGKILL, power loss, ...).
STALE_AFTER_SECONDS = 45
# On the worker's own machine, a job whose process is gone is dead after this long (workers beat
# every 2 s; the wait keeps a container that shares the host name, with pids of its own, safe).
LOCAL_STALE_AFTER_SECONDS = 10


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    title: str
    params: dict
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    host: str | None
    pid: int | None
    attempts: int
    cancel_requested: bool
    resume: bool
    run_dir: str | None
    progress: dict | None
    result: dict | None
    error: str | None
    owner: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    # A training job's parameters, named, for the code and messages that deal with adapters.
    @property
    def adapter_name(self) -> str | None:
        return self.params.get("adapter_name")

    @property
    def dataset_name(self) -> str | None:
        return self.params.get("dataset_name")

    @property
    def base_model(self) -> str | None:
        return self.params.get("base_model")

    @property
    def method(self) -> str | None:
        return self.params.get("method")

    @property
    def final_metrics(self) -> dict | None:
        return self.result

    def as_dict(self) -> dict:
        """Plain JSON-ready values, for `--json` and exports."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "owner"}
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _job(row) -> Job:
    values = dict(row._mapping)
    values["owner"] = str(values["owner"]) if values.get("owner") else None
    return Job(**{k: values[k] for k in Job.__dataclass_fields__})


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_adapter_name(name: str) -> str:
    name = (name or "").strip()
    if not _ADAPTER_NAME.match(name):
        raise JobError(
            f"{name!r} cannot be an adapter name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return name


def create_job(db: Database, *, kind: str, params: BaseModel | dict, title: str, unique_key: str | None = None) -> Job:
    """Queue a job of any kind. `params` is the kind's validated pydantic model. With `unique_key`
    (a params field), a queued or running job of this kind with the same value is refused."""
    job_kind(kind)
    values = params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)
    with db.engine.begin() as connection:
        if unique_key:
            # One submission at a time per key: two pages pressing Start together get one job.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"job:{kind}:{values[unique_key]}"})
            busy = connection.execute(
                text("SELECT id FROM jobs WHERE kind = :kind AND params->>:key = :value AND status IN ('queued', 'running')"),
                {"kind": kind, "key": unique_key, "value": str(values[unique_key])},
            ).scalar()
            if busy:
                raise JobError(f"Job {busy} is already working on {values[unique_key]!r}; wait for it or cancel it.")
        job_id = connection.execute(
            text("INSERT INTO jobs (kind, title, params) VALUES (:kind, :title, CAST(:p AS jsonb)) RETURNING id"),
            {"kind": kind, "title": title, "p": json.dumps(values)},
        ).scalar_one()
    return get_job(db, job_id)


def get_job(db: Database, job_id: int) -> Job:
    with db.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if row is None:
        raise JobError(f"No job {job_id}; `python -m core jobs list` shows the jobs.")
    return _job(row)


def list_jobs(db: Database, limit: int = 100, *, kind: str | None = None) -> list[Job]:
    """Newest first. Read-only: stale jobs are detected by the worker, not by whoever looks."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT * FROM jobs WHERE (CAST(:kind AS text) IS NULL OR kind = :kind) ORDER BY id DESC LIMIT :limit"),
            {"kind": kind, "limit": limit},
        ).all()
    return [_job(row) for row in rows]


def claim_next_job(db: Database, pid: int, *, host: str | None = None) -> Job | None:
    """Take the oldest queued job; SKIP LOCKED lets many workers share one queue safely.

    A job that loads a language model is not claimed while another such job runs on this host,
    so two workers on one machine never train on one GPU at once. The host's advisory lock makes
    that check and the claim one step for all workers of the host.
    """
    host = host or socket.gethostname()
    with db.engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:h))"), {"h": f"claim:{host}"})
        row = connection.execute(
            text(
                """
                UPDATE jobs SET status = 'running', started_at = coalesce(started_at, now()), heartbeat_at = now(),
                       host = :host, pid = :pid, attempts = attempts + 1, error = NULL, owner = :owner
                WHERE id = (
                    SELECT id FROM jobs q WHERE status = 'queued'
                      AND NOT (kind = ANY(:exclusive) AND EXISTS (
                          SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.host = :host AND r.kind = ANY(:exclusive)))
                    ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1)
                RETURNING id
                """
            ),
            {"host": host, "pid": pid, "owner": str(uuid.uuid4()), "exclusive": list(EXCLUSIVE_KINDS)},
        ).first()
    return get_job(db, row.id) if row else None


@dataclass(frozen=True)
class Beat:
    owned: bool
    cancel_requested: bool


def heartbeat(db: Database, job_id: int, owner: str, child_pid: int | None = None) -> Beat:
    """Mark the job alive. `owned` False: the job is no longer this attempt's, stop its process.
    (A job this attempt has just finished stays owned: its process is exiting by itself.)"""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "UPDATE jobs SET heartbeat_at = now(), pid = coalesce(:pid, pid) "
                "WHERE id = :id AND owner = :owner RETURNING cancel_requested"
            ),
            {"id": job_id, "pid": child_pid, "owner": owner},
        ).first()
    return Beat(owned=row is not None, cancel_requested=bool(row and row.cancel_requested))


def _owned_update(db: Database, job_id: int, owner: str, assignments: str, values: dict) -> None:
    with db.engine.begin() as connection:
        updated = connection.execute(
            text(f"UPDATE jobs SET {assignments} WHERE id = :id AND owner = :owner AND status = 'running' RETURNING id"),
            {"id": job_id, "owner": owner, **values},
        ).first()
    if updated is None:
        raise LostOwnership(f"Job {job_id} is no longer run by this process; stopping.")


def set_run_dir(db: Database, job_id: int, owner: str, run_dir: str) -> None:
    _owned_update(db, job_id, owner, "run_dir = :r", {"r": run_dir})


def record_progress(db: Database, job_id: int, owner: str, progress: dict) -> None:
    """progress: {"done", "total", "unit", "eta_seconds", "elapsed_seconds", ...}: the job view reads these."""
    _owned_update(db, job_id, owner, "progress = CAST(:p AS jsonb)", {"p": json.dumps(progress)})


def finish_job(db: Database, job_id: int, owner: str, status: str, *, error: str | None = None,
               result: dict | None = None) -> bool:
    """Set the final state once, only by the attempt that owns the job; returns whether it did."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "UPDATE jobs SET status = :s, finished_at = now(), error = :e, "
                "result = coalesce(CAST(:m AS jsonb), result) "
                "WHERE id = :id AND owner = :owner AND status = 'running' RETURNING id"
            ),
            {"s": status, "e": error, "m": json.dumps(result) if result else None, "id": job_id, "owner": owner},
        ).first()
    return row is not None


def cancel_job(db: Database, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is stopped by its worker within seconds."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "UPDATE jobs SET cancel_requested = true, "
                "status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, "
                "finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END, "
                "error = CASE WHEN status = 'queued' THEN 'Cancelled before it started.' ELSE error END "
                "WHERE id = :id AND status IN ('queued', 'running') RETURNING id"
            ),
            {"id": job_id},
        ).first()
    if row is None:
        job = get_job(db, job_id)
        raise JobError(f"Job {job_id} has already {job.status}; nothing to cancel.")
    append_log(db, job_id, ["Cancel requested."])
    return get_job(db, job_id)


def resume_job(db: Database, job_id: int) -> Job:
    """Queue a failed or cancelled job again; it continues from what it saved (a training job from
    its last checkpoint). One statement decides, so two resumes at once give one queued job."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "UPDATE jobs SET status = 'queued', resume = true, cancel_requested = false, owner = NULL, "
                "finished_at = NULL, error = NULL WHERE id = :id AND status IN ('failed', 'cancelled') RETURNING id"
            ),
            {"id": job_id},
        ).first()
    if row is None:
        job = get_job(db, job_id)
        raise JobError(f"Job {job_id} is {job.status}; only failed or cancelled jobs can be resumed.")
    append_log(db, job_id, ["Resume requested: the job continues from what it saved."])
    return get_job(db, job_id)


def fail_stale_jobs(db: Database, stale_after: int = STALE_AFTER_SECONDS, *, host: str | None = None,
                    local_stale_after: int = LOCAL_STALE_AFTER_SECONDS) -> list[int]:
    """Running jobs whose worker stopped reporting are failed, with their last log lines as the
    reason. On this `host` (default: this machine) a job whose process is gone is dead after a few
    missed beats already, so a new worker carries on at once after one was killed. Clearing the
    owner makes any late write of the old attempt fail, so its process stops and it can never
    later flip the job to "succeeded"."""
    host = host or socket.gethostname()
    with db.engine.begin() as connection:
        candidates = connection.execute(
            text(
                "SELECT id, heartbeat_at, pid, heartbeat_at < now() - make_interval(secs => :s) AS silent FROM jobs "
                "WHERE status = 'running' AND (heartbeat_at < now() - make_interval(secs => :s) "
                "OR (host = :host AND heartbeat_at < now() - make_interval(secs => :local))) FOR UPDATE SKIP LOCKED"
            ),
            {"s": stale_after, "host": host, "local": local_stale_after},
        ).all()
        stale = [(row.id, row.heartbeat_at) for row in candidates if row.silent or not _process_exists(row.pid)]
        for job_id, last_beat in stale:
            tail = "\n".join(_log_tail(connection, job_id, 5))
            connection.execute(
                text("UPDATE jobs SET status = 'failed', finished_at = now(), owner = NULL, error = :e WHERE id = :id"),
                {
                    "id": job_id,
                    "e": f"The worker stopped unexpectedly: the job stopped without finishing (last sign of life at "
                         f"{last_beat:%Y-%m-%d %H:%M:%S %Z}). Resume it to continue from what it saved.\n"
                         f"Last log lines:\n{tail}",
                },
            )
    return [job_id for job_id, _ in stale]


def _process_exists(pid: int | None) -> bool:
    """On this machine: whether the job's process (or its worker, before the first beat) still runs."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def delete_job(db: Database, job_id: int) -> None:
    """Remove a finished job with its logs and metrics."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text("DELETE FROM jobs WHERE id = :id AND status IN ('succeeded', 'failed', 'cancelled') RETURNING id"),
            {"id": job_id},
        ).first()
    if row is None:
        job = get_job(db, job_id)
        raise JobError(f"Job {job_id} is {job.status}: cancel it before deleting it.")


# --- metrics and logs -------------------------------------------------------------------------

METRIC_FIELDS = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "memory_mb")


def record_metrics(db: Database, job_id: int, owner: str, step: int, values: dict[str, Any]) -> None:
    row = {name: values.get(name) for name in METRIC_FIELDS}
    with db.engine.begin() as connection:
        inserted = connection.execute(
            text(
                "INSERT INTO job_metrics (job_id, step, " + ", ".join(METRIC_FIELDS) + ") "
                "SELECT :job_id, :step, " + ", ".join(f":{n}" for n in METRIC_FIELDS) + " "
                "WHERE EXISTS (SELECT 1 FROM jobs WHERE id = :job_id AND owner = :owner AND status = 'running') RETURNING id"
            ),
            {"job_id": job_id, "step": step, "owner": owner, **row},
        ).first()
    if inserted is None:
        raise LostOwnership(f"Job {job_id} is no longer run by this process; stopping.")


def forget_metrics_after(db: Database, job_id: int, step: int) -> None:
    """A resumed job repeats the steps after its checkpoint: drop their first recording."""
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM job_metrics WHERE job_id = :id AND step > :s"), {"id": job_id, "s": step})


def job_metrics(db: Database, job_id: int) -> list[dict]:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT step, " + ", ".join(METRIC_FIELDS) + ", recorded_at FROM job_metrics WHERE job_id = :id ORDER BY step, id"),
            {"id": job_id},
        ).all()
    return [dict(row._mapping) for row in rows]


def append_log(db: Database, job_id: int, lines: list[str], *, owner: str | None = None) -> bool:
    """Add log lines; with `owner`, only while that attempt owns the job (returns whether written)."""
    lines = [line.rstrip() for line in lines if line.strip()]
    if not lines:
        return True
    with db.engine.begin() as connection:
        if owner is not None:
            owned = connection.execute(
                text("SELECT 1 FROM jobs WHERE id = :id AND owner = :owner FOR SHARE"), {"id": job_id, "owner": owner}
            ).first()
            if owned is None:
                return False
        connection.execute(
            text("INSERT INTO job_logs (job_id, line) VALUES (:id, :line)"), [{"id": job_id, "line": line[:4000]} for line in lines]
        )
    return True


def _log_tail(connection, job_id: int, lines: int) -> list[str]:
    rows = connection.execute(
        text("SELECT line FROM job_logs WHERE job_id = :id ORDER BY id DESC LIMIT :n"), {"id": job_id, "n": lines}
    ).scalars().all()
    return list(reversed(rows))


def job_log_tail(db: Database, job_id: int, lines: int = 40) -> list[str]:
    get_job(db, job_id)  # an unknown id is a user mistake, not an empty log
    with db.engine.connect() as connection:
        return _log_tail(connection, job_id, lines)


def job_log_since(db: Database, job_id: int, after_id: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
    """(id, line) pairs after `after_id`, for following a log without repeating lines."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, line FROM job_logs WHERE job_id = :j AND id > :a ORDER BY id LIMIT :n"),
            {"j": job_id, "a": after_id, "n": limit},
        ).all()
    return [(row.id, row.line) for row in rows]
