"""Training checkpoints kept in the database, so a job can resume on any machine with the same
DATABASE_URL, not only on the one whose disk holds its run folder.

Each job has at most one stored checkpoint, the artifact `checkpoint`/`job-<id>` with its step in
metadata; publishing a newer one replaces it (and deletes the old bytes) in one transaction.
Resuming picks whichever is newer: the stored one or the newest complete local one.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.db import Database
from core.jobs.artifacts import ArtifactError, ArtifactInfo, delete_artifact, get_artifact, publish_folder, restore_folder

KIND = "checkpoint"
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last: its presence marks a complete checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(job_id: int) -> str:
    return f"job-{job_id}"


def _step(folder: Path) -> int:
    return int(_CHECKPOINT.match(folder.name).group(1))


def latest_local_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder here, or None."""
    checkpoints_dir = Path(checkpoints_dir)
    found = [p for p in checkpoints_dir.glob("checkpoint-*")
             if p.is_dir() and _CHECKPOINT.match(p.name) and (p / TRAINER_STATE).is_file()]
    return max(found, key=_step, default=None)


def stored_checkpoint(db: Database, job_id: int) -> ArtifactInfo | None:
    return get_artifact(db, KIND, checkpoint_name(job_id))


def publish_checkpoint(db: Database, job_id: int, checkpoint_folder: Path, step: int) -> ArtifactInfo:
    """Store a complete checkpoint as the job's one checkpoint in the database, unless a newer one
    is already there (a late save of an older attempt must not move the job back)."""
    checkpoint_folder = Path(checkpoint_folder)
    if not (checkpoint_folder / TRAINER_STATE).is_file():
        raise ArtifactError(f"{checkpoint_folder} is not a complete checkpoint (no {TRAINER_STATE} yet).")
    stored = stored_checkpoint(db, job_id)
    if stored is not None and int(stored.metadata.get("step", -1)) > step:
        return stored
    return publish_folder(db, kind=KIND, name=checkpoint_name(job_id), folder=checkpoint_folder, job_id=job_id,
                          metadata={"step": int(step)}, replace=True)


def restore_latest_checkpoint(db: Database, job_id: int, checkpoints_dir: Path) -> Path | None:
    """The checkpoint to resume from: when the database holds a newer one than any complete local
    checkpoint (another machine ran the job), it is unpacked to `checkpoints_dir/checkpoint-<step>`
    first; otherwise the newest local one. None when there is neither."""
    checkpoints_dir = Path(checkpoints_dir)
    local = latest_local_checkpoint(checkpoints_dir)
    stored = stored_checkpoint(db, job_id)
    if stored is None or (local is not None and _step(local) >= int(stored.metadata.get("step", -1))):
        return local
    target, _info = restore_folder(db, KIND, checkpoint_name(job_id), checkpoints_dir,
                                   lambda info: f"checkpoint-{int(info.metadata['step'])}")
    return target


def delete_checkpoint(db: Database, job_id: int) -> bool:
    """Drop the job's stored checkpoint (e.g. once its adapter is published); False when there was none."""
    if stored_checkpoint(db, job_id) is None:
        return False
    try:
        delete_artifact(db, KIND, checkpoint_name(job_id))
    except ArtifactError:  # deleted by another process meanwhile
        return False
    return True

