"""python -m core.models.merge_job --job ID: an adapter folded into its base model and saved as a
plain safetensors model, as a job of its own process (kind "merge").

`submit_merge` checks the adapter, its base model and the output folder, then queues the job;
`run` merges in a staging folder and moves it into place only when it is whole.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from core.config import Settings
from core.db import Database
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.adapters import AdapterError, list_adapters, merge_adapter
from core.models.registry import check_model_available

KIND = "merge"


class MergeParams(BaseModel):
    """A merge job's parameters as stored in its row (checked before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str
    output: str | None = None  # an absolute folder; None: <models dir>/merged/<adapter> where the job runs


def submit_merge(db: Database, adapter: str, output: str | Path | None = None, settings: Settings | None = None) -> Job:
    """Check the adapter, its base model and the output folder, then queue the merge (one per adapter)."""
    adapters = {a.name: a for a in list_adapters(db)}
    info = adapters.get(adapter)
    if info is None:
        raise AdapterError(f"No adapter named {adapter!r}. Available: {', '.join(adapters) or 'none yet (fine-tune one first)'}.")
    if not info.base_model:
        raise AdapterError(f"Adapter {adapter!r} does not name its base model, so there is nothing to merge it into.")
    check_model_available(info.base_model, settings)
    if output is not None:
        folder = Path(output).expanduser().resolve()  # the caller's folder: the job's process runs elsewhere
        if folder.exists() and not folder.is_dir():
            raise AdapterError(f"{folder} is a file; give a folder for the merged model.")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
            raise AdapterError(f"{folder} already holds other files and the merge replaces the folder: choose a new "
                               "or empty folder.")
        output = str(folder)
    params = MergeParams(adapter=adapter, output=output)
    return create_job(db, kind=KIND, params=params, title=f"Merge {adapter} into {info.base_model}", unique_key="adapter")


def run(context: JobContext) -> dict:
    """The job's entry point: merge, then name the folder the model is in."""
    p = MergeParams.model_validate(context.job.params)
    print(f"Merging adapter {p.adapter!r} into its base model (full precision).", flush=True)
    folder = merge_adapter(context.db, p.adapter, output=Path(p.output) if p.output else None, settings=context.settings)
    message = f"Merged model (safetensors) saved in {folder}."
    print(message, flush=True)
    return {"adapter": p.adapter, "output": str(folder), "message": message}


if __name__ == "__main__":
    main_for(run)
