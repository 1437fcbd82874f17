"""The side of a job that runs in its own process: `python -m <kind's module> --job ID`.

`run_job_process(work)` opens the database, reads the job, installs the cancel signal, and calls
`work(context)`; it records the ending (succeeded with the returned result, cancelled, or failed
with a reason a user can act on). Every write goes through the owner token the worker passes in
EXPERT_STUDIO_JOB_OWNER, so a process whose job was declared dead stops at its next report.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings, get_settings
from core.db import Database, open_database
from core.jobs.errors import LostOwnership
from core.jobs.queue import Job, finish_job, get_job, record_progress, set_run_dir

OWNER_ENV = "EXPERT_STUDIO_JOB_OWNER"


class Cancelled(Exception):
    """The user cancelled the job; raised at the next progress report."""


class StopRequest:
    """Set by SIGTERM (the worker's cancel) or by the job's cancel flag in the database."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.requested = True


@dataclass
class JobContext:
    """What a job's code needs: its row, the database, its folder, and progress reports that also
    carry the cancel back (raising `Cancelled`) and stop a process that lost its job."""

    db: Database
    job: Job
    owner: str
    run_dir: Path
    settings: Settings
    stop: StopRequest
    check_every: float = 2.0
    _started: float = field(default_factory=time.perf_counter)
    _last_check: float = 0.0

    @property
    def cancel_requested(self) -> bool:
        now = time.perf_counter()
        if not self.stop.requested and now - self._last_check >= self.check_every:
            self._last_check = now
            self.stop.requested = get_job(self.db, self.job.id).cancel_requested
        return self.stop.requested

    def progress(self, done: float, total: float | None, unit: str = "items", **extra) -> None:
        """Report `done` of `total`, with the ETA from the pace so far; raises Cancelled on cancel."""
        elapsed = time.perf_counter() - self._started
        eta = (total - done) * elapsed / done if total and done else None
        record_progress(self.db, self.job.id, self.owner, {
            "done": done, "total": total, "unit": unit, "elapsed_seconds": elapsed, "eta_seconds": eta, **extra,
        })
        if self.cancel_requested:
            raise Cancelled

    def fraction(self, value: float) -> None:
        """For core functions that report a fraction 0..1 through a `progress` callback."""
        self.progress(round(value * 100, 1), 100, "%")


def run_dir_for(settings: Settings, job_id: int) -> Path:
    return settings.data_dir.resolve() / "runs" / f"job-{job_id}"


def run_job_process(work: Callable[[JobContext], dict | None], argv: list[str] | None = None,
                    explain: Callable[[BaseException, Path], str] | None = None) -> int:
    """The whole life of one job process; returns its exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", type=int, required=True)
    args = parser.parse_args(argv)
    owner = os.environ.get(OWNER_ENV, "")
    stop = StopRequest()  # installed first: a cancel while loading is not lost
    settings = get_settings()
    db = open_database(settings)
    job = get_job(db, args.job)
    if not owner or job.owner != owner:
        print(f"Job {job.id} is not owned by this process (start jobs through a worker); nothing done.", flush=True)
        return 3
    run_dir = run_dir_for(settings, job.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    context = JobContext(db=db, job=job, owner=owner, run_dir=run_dir, settings=settings, stop=stop)
    if int(os.environ.get("RANK", "0")) > 0:  # accelerate's other GPU processes: rank 0 reports and records
        work(context)
        return 0
    try:
        set_run_dir(db, job.id, owner, str(run_dir))
        print(f"Job {job.id} ({job.kind}): {job.title} (attempt {job.attempts}).", flush=True)
        result = work(context)
    except Cancelled:
        finish_job(db, job.id, owner, "cancelled", error="Cancelled by the user. Resume continues from what it saved.")
        print("Cancelled.", flush=True)
        return 0
    except LostOwnership as error:
        print(str(error), flush=True)
        return 4
    except BaseException as error:
        traceback.print_exc()
        if get_job(db, job.id).cancel_requested:  # the user asked it to stop: that is how it ended
            finish_job(db, job.id, owner, "cancelled", error="Cancelled by the user. Resume continues from what it saved.")
            return 0
        reason = (explain or default_explanation)(error, run_dir)
        finish_job(db, job.id, owner, "failed", error=reason)
        return 1
    if not finish_job(db, job.id, owner, "succeeded", result=result or {}):
        print("The job was taken from this process before it finished; its ending is not recorded.", flush=True)
        return 4
    print("Done.", flush=True)
    return 0


def default_explanation(error: BaseException, run_dir: Path) -> str:
    """The reason a user reads in the jobs table: what happened and what to do."""
    from core.errors import UserError

    if isinstance(error, UserError):
        return str(error)
    full = _disk_full(error)
    if full == "no space":
        import shutil

        free = shutil.disk_usage(run_dir).free / 2**20
        return (f"The disk is full ({free:,.0f} MB free where the job writes: {run_dir}). Free some space, then resume "
                "the job: it continues from what it saved.")
    if full:
        return (f"The disk is full for this job: {full} where it writes ({run_dir}). Free some space or raise the "
                "limit, then resume the job: it continues from what it saved.")
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return "Out of memory: use a smaller model or batch, or 4-bit loading."
    if isinstance(error, KeyboardInterrupt):
        return "Interrupted."
    return f"{type(error).__name__}: {str(error)[:1500]}"


def _disk_full(error: BaseException | None) -> str | None:
    """ENOSPC ("no space"), or a file size limit (EFBIG) or quota (EDQUOT) reached, anywhere in the
    chain; safetensors and torch wrap them in their own error types. None for anything else."""
    import errno

    limits = {errno.ENOSPC: "no space", errno.EFBIG: "a file reached the largest size allowed (File too large)",
              errno.EDQUOT: "the disk quota is used up (Disk quota exceeded)"}
    texts = {"No space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC, "File too large": errno.EFBIG,
             "os error 27": errno.EFBIG, "Disk quota exceeded": errno.EDQUOT, "os error 122": errno.EDQUOT}
    while error is not None:
        if isinstance(error, OSError) and error.errno in limits:
            return limits[error.errno]
        for text, code in texts.items():
            if text in str(error):
                return limits[code]
        if "inline_container.cc" in str(error) and "unexpected pos" in str(error):
            return limits[_why_a_write_was_cut_short()]
        error = error.__cause__ or error.__context__
    return None


def _why_a_write_was_cut_short() -> int:
    """torch.save's zip writer reports a short write as "unexpected pos A vs B" and drops the errno:
    a file size limit on this process (EFBIG) if one is set, otherwise a full disk or quota."""
    import errno
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return errno.EFBIG if soft != resource.RLIM_INFINITY else errno.ENOSPC


def main_for(work: Callable[[JobContext], dict | None], explain=None) -> None:
    """`if __name__ == "__main__": main_for(run)` in each kind's module."""
    sys.exit(run_job_process(work, explain=explain))
