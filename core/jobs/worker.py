"""python -m core.jobs.worker (or `python -m core worker`): claims queued jobs of every kind and
runs each in its own process, started by the kind's module name.

The worker keeps the job alive in Postgres (heartbeat, under the claim's owner token), ships the
process's output lines to the job's log, turns a cancel into SIGTERM (SIGKILL if the process does
not stop within seconds), stops the process at once when the job is no longer its own (declared
dead meanwhile), and records how the process ended. It is also the one place that declares other
workers' jobs dead. Any machine with the same DATABASE_URL can run a worker. A database restart
does not stop it: it keeps watching its process and reconnects (DatabaseUnavailable in between).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text

from core.config import Settings, get_settings
from core.db import Database
from core.db.engine import DatabaseUnavailable
from core.jobs.kinds import job_kind
from core.jobs.process import OWNER_ENV
from core.jobs.queue import (
    Job,
    append_log,
    claim_next_job,
    fail_stale_jobs,
    finish_job,
    get_job,
    heartbeat,
    job_log_tail,
)

HEARTBEAT_SECONDS = 2.0
CANCEL_GRACE_SECONDS = 7.0  # SIGTERM, then SIGKILL: a cancel always ends within 10 s
WORKER_ALIVE_SECONDS = 15
PROCESS_EXITED = "The job's process exited"
DATABASE_PATIENCE_SECONDS = 60  # a database restart shorter than this costs no job its ending
T = TypeVar("T")


def _die_with_parent() -> None:
    """Linux: the training process gets SIGKILL if its worker dies, so no job trains unwatched."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def job_command(job: Job) -> list[str]:
    """One process per job, by the kind's module; with several GPUs, accelerate launches training
    once per GPU."""
    command = ["-m", job_kind(job.kind).module, "--job", str(job.id)]
    if job.kind != "train":
        return [sys.executable, *command]
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), *command]
    return [sys.executable, *command]


class LogShipper:
    """Copies complete new lines of the process's output file into the job's log."""

    def __init__(self, db: Database, job_id: int, owner: str, path: Path):
        self.db, self.job_id, self.owner, self.path = db, job_id, owner, path
        self.offset = path.stat().st_size if path.exists() else 0

    def ship(self, final: bool = False) -> None:
        with open(self.path, "rb") as stream:
            stream.seek(self.offset)
            chunk = stream.read()
        if not final:
            chunk = chunk[: chunk.rfind(b"\n") + 1]
        lines = chunk.decode("utf-8", errors="replace").replace("\r", "\n").split("\n")
        append_log(self.db, self.job_id, lines, owner=self.owner)
        self.offset += len(chunk)  # after the write: lines that met a database restart are sent again


def run_job(db: Database, job: Job, settings: Settings) -> str:
    """Run one claimed job to its end; returns its final status."""
    run_dir = settings.data_dir.resolve() / "runs" / f"job-{job.id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / "output.log"
    output.touch()
    shipper = LogShipper(db, job.id, job.owner, output)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EXPERT_STUDIO_DATA_DIR": str(settings.data_dir.resolve()),
           "TOKENIZERS_PARALLELISM": "false", OWNER_ENV: job.owner}
    with open(output, "ab") as sink:
        process = subprocess.Popen(job_command(job), stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, preexec_fn=_die_with_parent, cwd=Path(__file__).parents[2])
    append_log(db, job.id, [f"Worker {socket.gethostname()}:{os.getpid()} started process {process.pid} for this "
                            f"{job.kind} job."], owner=job.owner)
    cancel_deadline = None
    lost = False
    last_beat = 0.0
    while process.poll() is None:
        time.sleep(0.5)
        try:
            shipper.ship()
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                _register(db)  # the worker is alive too, so the app does not start another one
                fail_stale_jobs(db)  # other workers' dead jobs; this one's is fresh
                beat = heartbeat(db, job.id, job.owner, process.pid)
                if not beat.owned and not lost:
                    # Declared dead or claimed again elsewhere: this attempt must not go on writing.
                    lost = True
                    print(f"Job {job.id} is no longer this worker's: stopping its process.", flush=True)
                    _signal_group(process.pid, signal.SIGKILL)
                elif beat.cancel_requested and cancel_deadline is None:
                    _signal_group(process.pid, signal.SIGTERM)
                    cancel_deadline = time.monotonic() + CANCEL_GRACE_SECONDS
            if cancel_deadline is not None and time.monotonic() > cancel_deadline:
                _signal_group(process.pid, signal.SIGKILL)
                cancel_deadline = float("inf")
                append_log(db, job.id, ["The process did not stop in time: killed."], owner=job.owner)
        except DatabaseUnavailable as error:
            # A restart of the database: keep watching the process; the next beat reconnects.
            print(f"Job {job.id}: {error}", flush=True)
    _until_reachable(lambda: shipper.ship(final=True))
    # The last line of every attempt: a follower knows the log is complete (the process records
    # its ending before the worker has shipped its final lines).
    _until_reachable(lambda: append_log(db, job.id, [f"{PROCESS_EXITED} (code {process.returncode})."], owner=job.owner))
    _until_reachable(lambda: _record_unexpected_end(db, job, process.returncode))
    return _until_reachable(lambda: get_job(db, job.id).status)


def _record_unexpected_end(db: Database, job: Job, code: int) -> None:
    """The process died without recording an ending: say how (finish_job writes once, so a repeat is harmless)."""
    ended = get_job(db, job.id)
    if ended.status != "running" or ended.owner != job.owner:
        return
    if ended.cancel_requested:
        finish_job(db, job.id, job.owner, "cancelled", error="Cancelled by the user. Resume continues from what it saved.")
        return
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    tail = "\n".join(job_log_tail(db, job.id, 8))
    finish_job(db, job.id, job.owner, "failed",
               error=f"The job's process {how}. Resume it to continue from what it saved.\nLast log lines:\n{tail}")


def _until_reachable(call: Callable[[], T], patience: float = DATABASE_PATIENCE_SECONDS) -> T:
    """`call()`, repeated while the database is restarting, for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except DatabaseUnavailable as error:
            if time.monotonic() > deadline:
                raise
            print(f"{error} Trying again.", flush=True)
            time.sleep(1.0)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _register(db: Database) -> None:
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO workers (host, pid) VALUES (:h, :p) "
                "ON CONFLICT (host, pid) DO UPDATE SET heartbeat_at = now()"
            ),
            {"h": socket.gethostname(), "p": os.getpid()},
        )


def _unregister(db: Database) -> None:
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM workers WHERE host = :h AND pid = :p"), {"h": socket.gethostname(), "p": os.getpid()})


def run_worker(db: Database, settings: Settings | None = None, *, once: bool = False, poll_seconds: float = 2.0,
               exit_when_idle: float | None = None) -> None:
    """Claim and run jobs until stopped (SIGTERM/SIGINT), after one job with `once`, or after
    `exit_when_idle` seconds without work (the app's local worker does not outlive its use)."""
    settings = settings or get_settings()
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    if threading.current_thread() is threading.main_thread():  # tests run workers in threads
        signal.signal(signal.SIGTERM, stop)
    idle_since = time.monotonic()
    print(f"Worker {socket.gethostname()}:{os.getpid()} waiting for jobs ({db.description}).", flush=True)
    try:
        while not stopping:
            try:
                _register(db)
                fail_stale_jobs(db)
                job = claim_next_job(db, os.getpid())
            except DatabaseUnavailable as error:  # restarting: wait for it rather than exit
                print(f"{error} Waiting for it.", flush=True)
                time.sleep(poll_seconds)
                continue
            if job is None:
                if once or (exit_when_idle and time.monotonic() - idle_since > exit_when_idle):
                    return
                time.sleep(poll_seconds)
                continue
            print(f"Job {job.id} ({job.kind}): {job.title} started.", flush=True)
            status = run_job(db, job, settings)
            print(f"Job {job.id}: {status}.", flush=True)
            idle_since = time.monotonic()
            if once:
                return
    finally:
        with contextlib.suppress(DatabaseUnavailable):  # its row expires by itself
            _unregister(db)


def live_workers(db: Database) -> int:
    with db.engine.connect() as connection:
        return int(connection.execute(
            text("SELECT count(*) FROM workers WHERE heartbeat_at > now() - make_interval(secs => :s)"),
            {"s": WORKER_ALIVE_SECONDS},
        ).scalar())


def ensure_local_worker(db: Database, settings: Settings | None = None, idle_exit_seconds: int = 900) -> int | None:
    """Start a worker on this machine when none is alive; returns its pid (None if one was running)."""
    settings = settings or get_settings()
    if live_workers(db):
        return None
    logs = settings.data_dir.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EXPERT_STUDIO_DATA_DIR": str(settings.data_dir.resolve())}
    with open(logs / "worker.log", "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--exit-when-idle", str(idle_exit_seconds)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=Path(__file__).parents[2],
        )
    _wait_for_registration(db, timeout=30)
    return process.pid


def _wait_for_registration(db: Database, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not live_workers(db):
        time.sleep(0.3)



def main(argv: list[str] | None = None) -> int:
    """python -m core.jobs.worker (also `python -m core worker`)."""
    import argparse

    from core.db import open_database

    parser = argparse.ArgumentParser(prog="python -m core.jobs.worker", description="Run queued jobs, each in its own process.")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument("--exit-when-idle", type=float, help="exit after this many seconds without jobs")
    args = parser.parse_args(argv)
    run_worker(open_database(), once=args.once, exit_when_idle=args.exit_when_idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
