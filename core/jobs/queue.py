"""Fine-tuning jobs as rows in Postgres: queue, claim (SKIP LOCKED), progress, cancel, resume, and
the metrics and log lines that let any page show a job the same way wherever it runs."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from core.db import Database
from core.training.spec import Method, TrainingSettings

ACTIVE = ("queued", "running")
# A running job whose worker has not reported for this long is dead (SIGKILL, power loss, ...).
STALE_AFTER_SECONDS = 45


class JobError(ValueError):
    """A job request that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Job:
    id: int
    adapter_name: str
    dataset_id: int | None
    dataset_name: str | None
    base_model: str
    method: Method
    settings: TrainingSettings
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
    final_metrics: dict | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


_SELECT = """
SELECT j.*, d.name AS dataset_name FROM training_jobs j LEFT JOIN datasets d ON d.id = j.dataset_id
"""


def _job(row) -> Job:
    values = dict(row._mapping)
    values["settings"] = TrainingSettings.from_dict(values["settings"])
    return Job(**{k: values[k] for k in Job.__dataclass_fields__})


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_adapter_name(name: str) -> str:
    name = (name or "").strip()
    if not _ADAPTER_NAME.match(name):
        raise JobError(
            f"{name!r} cannot be an adapter name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return name


def create_job(db: Database, *, adapter_name: str, dataset_id: int, base_model: str, method: Method,
               settings: TrainingSettings) -> Job:
    """Queue a job. Checks that need the model or the data happen in core.training.submit."""
    with db.engine.begin() as connection:
        busy = connection.execute(
            text("SELECT id FROM training_jobs WHERE adapter_name = :n AND status IN ('queued', 'running')"),
            {"n": adapter_name},
        ).scalar()
        if busy:
            raise JobError(f"Job {busy} is already training an adapter named {adapter_name!r}; choose another name.")
        job_id = connection.execute(
            text(
                "INSERT INTO training_jobs (adapter_name, dataset_id, base_model, method, settings) "
                "VALUES (:n, :d, :m, :method, CAST(:s AS jsonb)) RETURNING id"
            ),
            {"n": adapter_name, "d": dataset_id, "m": base_model, "method": method, "s": json.dumps(settings.to_dict())},
        ).scalar_one()
    return get_job(db, job_id)


def get_job(db: Database, job_id: int) -> Job:
    with db.engine.connect() as connection:
        row = connection.execute(text(_SELECT + " WHERE j.id = :id"), {"id": job_id}).first()
    if row is None:
        raise JobError(f"No job {job_id}; `python -m core jobs list` shows the jobs.")
    return _job(row)


def list_jobs(db: Database, limit: int = 100) -> list[Job]:
    fail_stale_jobs(db)
    with db.engine.connect() as connection:
        rows = connection.execute(text(_SELECT + " ORDER BY j.id DESC LIMIT :limit"), {"limit": limit}).all()
    return [_job(row) for row in rows]


def claim_next_job(db: Database, pid: int) -> Job | None:
    """Take the oldest queued job; SKIP LOCKED lets many workers share one queue safely."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                """
                UPDATE training_jobs SET status = 'running', started_at = coalesce(started_at, now()),
                       heartbeat_at = now(), host = :host, pid = :pid, attempts = attempts + 1, error = NULL
                WHERE id = (SELECT id FROM training_jobs WHERE status = 'queued'
                            ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1)
                RETURNING id
                """
            ),
            {"host": socket.gethostname(), "pid": pid},
        ).first()
    return get_job(db, row.id) if row else None


def heartbeat(db: Database, job_id: int, child_pid: int | None = None) -> bool:
    """Mark the job alive; returns whether a cancel was requested."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(
                "UPDATE training_jobs SET heartbeat_at = now(), pid = coalesce(:pid, pid) "
                "WHERE id = :id RETURNING cancel_requested"
            ),
            {"id": job_id, "pid": child_pid},
        ).first()
    return bool(row and row.cancel_requested)


def set_run_dir(db: Database, job_id: int, run_dir: str) -> None:
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE training_jobs SET run_dir = :r WHERE id = :id"), {"r": run_dir, "id": job_id})


def record_progress(db: Database, job_id: int, progress: dict) -> None:
    with db.engine.begin() as connection:
        connection.execute(
            text("UPDATE training_jobs SET progress = CAST(:p AS jsonb) WHERE id = :id"),
            {"p": json.dumps(progress), "id": job_id},
        )


def finish_job(db: Database, job_id: int, status: str, *, error: str | None = None, final_metrics: dict | None = None) -> None:
    """Set the final state once: a job already finished (e.g. cancelled) keeps its first ending."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE training_jobs SET status = :s, finished_at = now(), error = :e, "
                "final_metrics = coalesce(CAST(:m AS jsonb), final_metrics) "
                "WHERE id = :id AND status IN ('queued', 'running')"
            ),
            {"s": status, "e": error, "m": json.dumps(final_metrics) if final_metrics else None, "id": job_id},
        )


def cancel_job(db: Database, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is stopped by its worker within seconds."""
    job = get_job(db, job_id)
    if job.finished:
        raise JobError(f"Job {job_id} has already {job.status}; nothing to cancel.")
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE training_jobs SET cancel_requested = true, "
                "status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, "
                "finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END WHERE id = :id"
            ),
            {"id": job_id},
        )
    append_log(db, job_id, ["Cancel requested."])
    return get_job(db, job_id)


def resume_job(db: Database, job_id: int) -> Job:
    """Queue a failed or cancelled job again; it continues from its last checkpoint."""
    job = get_job(db, job_id)
    if job.status not in ("failed", "cancelled"):
        raise JobError(f"Job {job_id} is {job.status}; only failed or cancelled jobs can be resumed.")
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE training_jobs SET status = 'queued', resume = true, cancel_requested = false, "
                "finished_at = NULL, error = NULL WHERE id = :id"
            ),
            {"id": job_id},
        )
    append_log(db, job_id, ["Resume requested: the job continues from its last checkpoint."])
    return get_job(db, job_id)


def fail_stale_jobs(db: Database, stale_after: int = STALE_AFTER_SECONDS) -> list[int]:
    """Running jobs whose worker stopped reporting are failed, with their last log lines as the reason."""
    with db.engine.begin() as connection:
        stale = connection.execute(
            text(
                "SELECT id, heartbeat_at FROM training_jobs WHERE status = 'running' "
                "AND heartbeat_at < now() - make_interval(secs => :s) FOR UPDATE SKIP LOCKED"
            ),
            {"s": stale_after},
        ).all()
        for job_id, last_beat in stale:
            tail = "\n".join(_log_tail(connection, job_id, 5))
            connection.execute(
                text(
                    "UPDATE training_jobs SET status = 'failed', finished_at = now(), error = :e WHERE id = :id"
                ),
                {
                    "id": job_id,
                    "e": f"The process running this job stopped without finishing (last sign of life at "
                         f"{last_beat:%Y-%m-%d %H:%M:%S %Z}). Resume it to continue from the last checkpoint.\n"
                         f"Last log lines:\n{tail}",
                },
            )
    return [job_id for job_id, _ in stale]


# --- metrics and logs -------------------------------------------------------------------------

METRIC_FIELDS = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "memory_mb")


def record_metrics(db: Database, job_id: int, step: int, values: dict[str, Any]) -> None:
    row = {name: values.get(name) for name in METRIC_FIELDS}
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_metrics (job_id, step, " + ", ".join(METRIC_FIELDS) + ") "
                "VALUES (:job_id, :step, " + ", ".join(f":{n}" for n in METRIC_FIELDS) + ")"
            ),
            {"job_id": job_id, "step": step, **row},
        )


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


def append_log(db: Database, job_id: int, lines: list[str]) -> None:
    lines = [line.rstrip() for line in lines if line.strip()]
    if not lines:
        return
    with db.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO job_logs (job_id, line) VALUES (:id, :line)"), [{"id": job_id, "line": line[:4000]} for line in lines]
        )


def _log_tail(connection, job_id: int, lines: int) -> list[str]:
    rows = connection.execute(
        text("SELECT line FROM job_logs WHERE job_id = :id ORDER BY id DESC LIMIT :n"), {"id": job_id, "n": lines}
    ).scalars().all()
    return list(reversed(rows))


def job_log_tail(db: Database, job_id: int, lines: int = 40) -> list[str]:
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
