"""LoRA adapters, kept in the database as artifacts (kind "adapter"): every machine with the same
DATABASE_URL lists the same adapters, whichever worker trained them. An adapter is published in one
transaction (a half-written one is never listed), used from this machine's content-addressed cache
(fetched on first use), zipped for download, and merged into its base model for export as a plain
safetensors model.

The cached folder's path contains the content hash, so an adapter trained again under a name that
was deleted gets a new path: whatever caches loaded adapters by path never serves the old weights.
The training record (job, settings, final metrics) travels inside the folder as training.json and
is copied into the artifact's metadata, so listings show metrics without fetching any weights.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from core.config import Settings
from core.db import Database
from core.errors import UserError
from core.jobs.artifacts import (
    ArtifactError,
    ArtifactInfo,
    artifact_cache_dir,
    delete_artifact,
    fetch_folder,
    folder_sha256,
    get_artifact,
    list_artifacts,
    publish_folder,
)
from core.models.registry import models_dir, resolve_model_path

KIND = "adapter"
TRAINING_RECORD = "training.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterError(UserError):
    """An adapter that cannot be used with the loaded model; the message says why."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path | None  # the local copy in the artifact cache; None in listings (nothing is fetched to list)
    base_model: str | None
    sha256: str = ""
    size_bytes: int = 0
    job_id: int | None = None
    created_at: datetime | None = None


def _adapter(info: ArtifactInfo, path: Path | None = None) -> AdapterInfo:
    return AdapterInfo(info.name, path, info.base_model, info.sha256, info.size_bytes, info.job_id, info.created_at)


def legacy_adapters_dir(settings: Settings | None = None) -> Path:
    """Where adapters lived before the database held them: `<models dir>/adapters/<name>/`."""
    return models_dir(settings) / "adapters"


def list_adapters(db: Database, settings: Settings | None = None) -> list[AdapterInfo]:
    """Finished LoRA adapters, by name (rows only: no adapter is fetched)."""
    return [_adapter(info) for info in list_artifacts(db, KIND)]


def adapter_exists(db: Database, name: str) -> bool:
    return get_artifact(db, KIND, name) is not None


def _not_found(db: Database, name: str) -> AdapterError:
    known = ", ".join(a.name for a in list_adapters(db)) or "none yet (fine-tune one first)"
    return AdapterError(f"No adapter named {name!r}. Available: {known}.")


def find_adapter(db: Database, name: str, settings: Settings | None = None) -> AdapterInfo:
    """The adapter with its files in this machine's cache (read from the database the first time)."""
    try:
        path = fetch_folder(db, KIND, name, artifact_cache_dir(settings))
    except ArtifactError as error:
        if adapter_exists(db, name):
            raise AdapterError(f"Adapter {name!r} cannot be read: {error}") from error
        raise _not_found(db, name) from None
    info = get_artifact(db, KIND, name)
    if info is None or info.sha256 != path.name:  # replaced or deleted this very moment: describe what was fetched
        return AdapterInfo(name, path, _base_model_of(path), path.name)
    return _adapter(info, path)


def _base_model_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def _training_record(folder: Path) -> dict:
    try:
        return json.loads((folder / TRAINING_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _job_settings(job) -> dict:
    """The training settings as stored in the job's parameters."""
    return dict((getattr(job, "params", None) or {}).get("settings") or {})


def publish_adapter(db: Database, staging: Path, job, metrics: dict, settings: Settings | None = None) -> AdapterInfo:
    """Publish a saved adapter under the job's adapter name, with its training record, in one
    transaction. The files also go into this machine's cache, so using it here reads nothing back."""
    config_path = staging / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = job.base_model  # the id users know, not this machine's path
    config_path.write_text(json.dumps(config, indent=2))
    record = {"job": job.id, "base_model": job.base_model, "method": job.method, "dataset": job.dataset_name,
              "settings": _job_settings(job), "metrics": metrics}
    (staging / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    existing = get_artifact(db, KIND, job.adapter_name)
    try:  # the same job publishing again (it was resumed after publishing) replaces its own adapter
        info = publish_folder(db, kind=KIND, name=job.adapter_name, folder=staging, job_id=job.id,
                              base_model=job.base_model, metadata=record, cache_root=artifact_cache_dir(settings),
                              replace=existing is not None and existing.job_id == job.id)
    except ArtifactError as error:
        if not adapter_exists(db, job.adapter_name):
            raise
        raise FileExistsError(f"An adapter named {job.adapter_name!r} appeared while this job ran; "
                              f"this one is kept in {staging}.") from error
    return _adapter(info, artifact_cache_dir(settings) / info.sha256)


def import_adapter(db: Database, folder: Path, name: str, settings: Settings | None = None) -> AdapterInfo:
    """Publish an adapter folder made elsewhere (a PEFT folder with adapter_config.json) under `name`."""
    folder = Path(folder)
    name = (name or "").strip()
    if not ADAPTER_NAME.match(name):
        raise AdapterError(f"{name!r} cannot be an adapter name: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit.")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{folder} has no {ADAPTER_CONFIG}: it is not a PEFT adapter folder.")
    if adapter_exists(db, name):
        raise AdapterError(f"An adapter named {name!r} already exists; choose another name or delete it first.")
    try:
        info = publish_folder(db, kind=KIND, name=name, folder=folder, base_model=_base_model_of(folder),
                              metadata=_training_record(folder), cache_root=artifact_cache_dir(settings))
    except ArtifactError as error:
        raise AdapterError(str(error)) from error
    return _adapter(info, artifact_cache_dir(settings) / info.sha256)


def import_local_adapters(db: Database, settings: Settings | None = None) -> list[str]:
    """Publish the adapter folders of `<models dir>/adapters/` (where adapters lived before the
    database held them) that the database does not have yet, so no one loses an adapter. Each
    imported folder is moved to `adapters/.imported/` afterwards: it is kept, but deleting the
    adapter later does not bring it back at the next start. Returns the names imported."""
    folder = legacy_adapters_dir(settings)
    if not folder.is_dir():
        return []
    imported = []
    for config in sorted(folder.glob(f"*/{ADAPTER_CONFIG}")):
        adapter = config.parent
        if adapter.name.startswith(".") or not ADAPTER_NAME.match(adapter.name):
            continue  # being written by an old version, or not a name an adapter can have
        existing = get_artifact(db, KIND, adapter.name)
        if existing is None:
            try:
                publish_folder(db, kind=KIND, name=adapter.name, folder=adapter, base_model=_base_model_of(adapter),
                               metadata=_training_record(adapter))
            except (ArtifactError, OSError):
                continue  # imported by another process at this moment (moved at the next start), or unreadable
            imported.append(adapter.name)
        elif existing.sha256 != folder_sha256(adapter):
            continue  # a different adapter owns this name in the database: leave this folder alone
        done = folder / ".imported" / adapter.name
        if not done.exists():
            done.parent.mkdir(exist_ok=True)
            try:
                adapter.rename(done)
            except OSError:
                pass  # moved by another process: it is imported either way
    return imported


def adapter_record(db: Database, name: str, settings: Settings | None = None) -> dict:
    """The job settings and final metrics saved with an adapter (empty for adapters made elsewhere)."""
    info = get_artifact(db, KIND, name)
    if info is None:
        raise _not_found(db, name)
    return dict(info.metadata)


def zip_adapter(db: Database, name: str, settings: Settings | None = None) -> bytes:
    folder = find_adapter(db, name, settings).path
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, Path(name) / file.relative_to(folder))
    return buffer.getvalue()


def delete_adapter(db: Database, name: str, settings: Settings | None = None) -> None:
    """Delete the adapter for every machine. Cached copies are left to `prune_cache`: a process of
    this or another machine may be reading them right now."""
    try:
        delete_artifact(db, KIND, name)
    except ArtifactError:
        raise _not_found(db, name) from None


def merge_adapter(db: Database, name: str, output: Path, settings: Settings | None = None) -> AdapterInfo:
    """Fold the adapter into full-precision base weights and save a standalone safetensors model
    (with the tokenizer) into `output`, a new or empty folder. Returns the adapter that was merged.
    Exporting safely (staging beside the export, swapping it in) is core.models.merge_job's part."""
    from core.documents.embeddings import bitsandbytes_deferred

    with bitsandbytes_deferred():  # a full-precision merge: peft need not import 4-bit support
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        adapter = find_adapter(db, name, settings)
        base_path = resolve_model_path(adapter.base_model or "", settings)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype="float32")
        merged = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    Path(output).mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter.path if (adapter.path / "tokenizer_config.json").exists() else base_path
                                  ).save_pretrained(output)
    return adapter
