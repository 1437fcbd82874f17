"""python -m core.models.merge_job --job ID: an adapter folded into its base model and saved as a
plain safetensors model, as a job of its own process (kind "merge").

`submit_merge` checks the adapter, its base model and the output folder, then queues the job;
`run` exports the merged model so that a crash at any moment leaves a complete export, the old one
or the new one:
- a merge replaces the whole output folder, so it only writes into a new or empty folder or one
  this app exported before (it holds EXPORT_MARKER): never into a folder of the user's files;
- the model is written into `DIR.partial-<id>` beside the export (same filesystem, never the system
  temp folder) and flushed to disk;
- then two renames swap it in: `DIR` → `DIR.old-<id>`, `DIR.partial-<id>` → `DIR`, and the old
  folder is removed;
- the next export into the same folder first puts back an old export that a crash left between
  the renames, and removes what crashed exports left behind.
Writers hold a flock on their partial folder (the kernel drops it when the process dies), so a
cleanup never removes the folder of an export in progress; the cleanup and the swap hold one on the
parent folder, so two exports into the same folder take turns there.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from core.config import Settings
from core.db import Database
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.models.adapters import AdapterError, list_adapters, merge_adapter
from core.models.registry import check_model_available, models_dir

KIND = "merge"
EXPORT_MARKER = ".expert-studio-export.json"  # in every folder a merge exported: the app may replace it

# The swap's steps, in order; `after_step` hears each name (tests stop the swap there, as a crash would).
STEPS = ("staged", "old moved aside", "new in place", "old removed")


class MergeParams(BaseModel):
    """A merge job's parameters as stored in its row (checked before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str
    output: str | None = None  # an absolute folder; None: <models dir>/merged/<adapter> where the job runs
    # A GGUF type (f16, q8_0, q4_0): write one .gguf file instead (core.models.gguf_export; `output` is then a file).
    gguf: str | None = Field(default=None, exclude_if=lambda value: value is None)


def default_output(adapter: str, settings: Settings | None = None) -> Path:
    """Where a merge goes when no folder is named: the app's own folder for merged models."""
    return models_dir(settings) / "merged" / adapter


def check_output_folder(folder: Path, app_owned: bool = False) -> None:
    """Refuse a folder a merge must not replace: a file, or a folder with files this app did not
    export (no EXPORT_MARKER). `app_owned`: the app's own default folder (exports of older versions
    there have no marker)."""
    if folder.exists() and not folder.is_dir():
        raise AdapterError(f"{folder} is a file; give a folder for the merged model.")
    if folder.is_dir() and not app_owned and not (folder / EXPORT_MARKER).is_file() and any(folder.iterdir()):
        raise AdapterError(f"{folder} already holds other files and the merge replaces the folder: choose a new "
                           "or empty folder (or one a merge exported before).")


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
        check_output_folder(folder)
        output = str(folder)
    params = MergeParams(adapter=adapter, output=output)
    return create_job(db, kind=KIND, params=params, title=f"Merge {adapter} into {info.base_model}", unique_key="adapter")


def run(context: JobContext) -> dict:
    """The job's entry point: merge, then name the folder the model is in."""
    p = MergeParams.model_validate(context.job.params)
    if p.gguf:
        from core.models.gguf_export import run_gguf_export

        return run_gguf_export(context, p)
    print(f"Merging adapter {p.adapter!r} into its base model (full precision).", flush=True)
    folder = export_merged(context.db, p.adapter, Path(p.output) if p.output else None, token=str(context.job.id),
                           settings=context.settings, after_step=lambda step: print(f"Export: {step}.", flush=True))
    message = f"Merged model (safetensors) saved in {folder}."
    print(message, flush=True)
    return {"adapter": p.adapter, "output": str(folder), "message": message}


def export_merged(db: Database, adapter: str, output: Path | None = None, *, token: str | None = None,
                  settings: Settings | None = None, after_step: Callable[[str], None] | None = None) -> Path:
    """Merge `adapter` into its base model and export it to `output` (default: the app's folder for
    merged models) through a staged folder beside it and a swap by renames. `token` names the staged
    and old folders (the job id; a random one otherwise)."""
    app_owned = output is None
    target = Path(output) if output is not None else default_output(adapter, settings)
    token = token or uuid.uuid4().hex[:12]
    staged = _leftover(target, "partial", token)
    target.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as writing:
        with _flock(target.parent):
            recover_export(target)
            check_output_folder(target, app_owned)  # again: the folder may have changed since the job was queued
            staged.mkdir()
            writing.enter_context(_flock(staged))  # before the parent's lock goes: no cleanup takes it for a crash's
        try:
            _write_marker(staged, adapter, token)  # first: every folder a merge writes is known as the app's
            info = merge_adapter(db, adapter, staged, settings)
            _write_marker(staged, adapter, token, info.sha256, info.base_model)
            _fsync_tree(staged)
            _step(after_step, "staged")
            with _flock(target.parent):
                check_output_folder(target, app_owned)  # files may have appeared there while it merged
                swap_into_place(staged, target, token, after_step)
        except BaseException:  # a failure (or a cancel): the old export back in place, nothing of this one left
            shutil.rmtree(staged, ignore_errors=True)
            with _flock(target.parent):
                recover_export(target)
            raise
    return target


def swap_into_place(staged: Path, target: Path, token: str, after_step: Callable[[str], None] | None = None) -> None:
    """Replace `target` by the complete folder `staged` (beside it) with two renames; the old folder
    is removed last. Hold the parent folder's lock. A crash between the renames leaves the old export
    in `DIR.old-<token>`, which `recover_export` puts back."""
    old = _leftover(target, "old", token)
    if target.exists():
        if not (target / EXPORT_MARKER).exists():  # an empty folder, or an export of an older version
            _write_marker(target, None, token)  # so that a cleanup knows it as the app's once moved aside
        target.rename(old)
        _fsync_dir(target.parent)
        _step(after_step, "old moved aside")
    staged.rename(target)
    _fsync_dir(target.parent)
    _step(after_step, "new in place")
    if old.exists():
        shutil.rmtree(old)
    _step(after_step, "old removed")


def recover_export(target: Path) -> list[Path]:
    """Undo what crashed exports into `target` left beside it; returns the folders removed. An old
    export moved aside by a swap that never put the new one in place goes back to `target`; other old
    exports and the partial folders of dead writers are removed. Only folders the app wrote (with its
    marker) or empty ones are touched. Hold the parent folder's lock."""
    removed = []
    for old in _leftovers(target, "old"):
        if not target.exists() and not target.is_symlink():
            old.rename(target)
            _fsync_dir(target.parent)
        else:
            shutil.rmtree(old)
            removed.append(old)
    for partial in _leftovers(target, "partial"):
        with _flock(partial, wait=False) as free:
            if free:  # no live writer holds it
                shutil.rmtree(partial)
                removed.append(partial)
    return removed


def _leftover(target: Path, kind: str, token: str) -> Path:
    return target.with_name(f"{target.name}.{kind}-{token}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    found = target.parent.glob(f"{glob.escape(target.name)}.{kind}-*")
    return sorted(p for p in found if p.is_dir() and not p.is_symlink() and
                  ((p / EXPORT_MARKER).is_file() or not any(p.iterdir())))


def _write_marker(folder: Path, adapter: str | None, token: str, sha256: str | None = None, base_model: str | None = None) -> None:
    record = {"written_by": "Expert Studio (adapters merge)", "adapter": adapter, "adapter_sha256": sha256,
              "base_model": base_model, "export": token}
    (folder / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")


def _step(after_step: Callable[[str], None] | None, name: str) -> None:
    if after_step is not None:
        after_step(name)


@contextmanager
def _flock(folder: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the folder itself (no lock file to leave behind; the kernel drops it when
    the process dies). Yields False when another process holds it and `wait` is False."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        except OSError:  # a filesystem without flock (some network mounts): go on without it
            held = True
        yield held
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files to disk before the swap, so a power cut cannot leave a swapped-in export
    whose files were never written."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


if __name__ == "__main__":
    main_for(run)
