"""python -m core.models.download_job --job ID: a model downloaded from the Hugging Face Hub into its cache,
as a job of its own process (kind "download"; the work is core.models.download).

`submit_download` asks the Hub first (a few seconds at most), so an offline machine, a gated model without
a token or an id that names no model is answered at once instead of by a failed job. The job reports MB done
of the total with this attempt's pace and time left; a cancel or a killed process leaves the partial file,
and Resume continues from it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core.config import Settings
from core.db import Database
from core.formatting import human_size
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.download import (
    DownloadProgress,
    download_model,
    files_to_fetch,
    inspect_model,
    validate_model_id,
    validate_revision,
)

KIND = "download"
MB = 1 << 20  # as core.formatting.human_size counts


class DownloadParams(BaseModel):
    """A download job's parameters as stored in its row (checked with the Hub before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    revision: str = "main"


def submit_download(db: Database, model_id: str, revision: str | None = None, settings: Settings | None = None) -> Job:
    """Check the id with the Hub (reachable, exists, not gated without a token), then queue the download
    (one per model at a time)."""
    model_id, revision = validate_model_id(model_id), validate_revision(revision)
    remote = inspect_model(model_id, revision, settings=settings)
    size = human_size(sum(f.size for f in files_to_fetch(remote.files)))
    title = f"Download {model_id}" + (f" ({revision})" if revision != "main" else "") + f", {size}"
    return create_job(db, kind=KIND, params=DownloadParams(model_id=model_id, revision=revision), title=title,
                      unique_key="model_id")


def run(context: JobContext) -> dict:
    """The job's entry point: download, reporting MB done, pace and time left; returns the snapshot folder."""
    p = DownloadParams.model_validate(context.job.params)
    last_line = [0.0]

    def report(progress: DownloadProgress) -> None:
        speed = progress.bytes_per_second
        context.progress(round(progress.done_bytes / MB, 1), round(progress.total_bytes / MB, 1), "MB",
                         eta_seconds=progress.eta_seconds, bytes_per_second=speed, file=progress.file)
        finished = progress.done_bytes == progress.total_bytes
        if progress.done_bytes - last_line[0] >= progress.total_bytes / 10 or (finished and last_line[0] != progress.done_bytes):
            last_line[0] = progress.done_bytes  # about ten lines per download in the log
            pace = f", {human_size(speed)}/s" if speed else ""
            left = f", about {progress.eta_seconds:.0f} s left" if progress.eta_seconds and not finished else ""
            print(f"{human_size(progress.done_bytes)} of {human_size(progress.total_bytes)}{pace}{left} ({progress.file}).",
                  flush=True)

    folder = download_model(p.model_id, p.revision, on_progress=report, say=lambda line: print(line, flush=True),
                            settings=context.settings)
    message = f"{p.model_id} is in the Hugging Face cache ({folder}); it loads offline by its id."
    return {"model_id": p.model_id, "revision": p.revision, "commit": folder.name, "path": str(folder), "message": message}


if __name__ == "__main__":
    main_for(run)
