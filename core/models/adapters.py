"""LoRA adapters on disk: listed and found by name, published atomically (a half-written one is
never listed), zipped for download, and merged into their base model for export as a plain safetensors model."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.models.registry import models_dir, resolve_model_path

TRAINING_RECORD = "training.json"


class AdapterError(ValueError):
    """An adapter that cannot be used with the loaded model; the message says why."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    base_model: str | None


def adapters_dir(settings: Settings | None = None) -> Path:
    return models_dir(settings) / "adapters"


def list_adapters(settings: Settings | None = None) -> list[AdapterInfo]:
    """Finished LoRA adapters (a folder with adapter_config.json), by name."""
    folder = adapters_dir(settings)
    found = []
    for config in sorted(folder.glob("*/adapter_config.json")) if folder.is_dir() else []:
        if config.parent.name.startswith("."):
            continue  # being written: published by a rename when complete
        try:
            base = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            continue  # unreadable: not listed as usable
        found.append(AdapterInfo(config.parent.name, config.parent, base))
    return found


def find_adapter(name: str, settings: Settings | None = None) -> AdapterInfo:
    for adapter in list_adapters(settings):
        if adapter.name == name:
            return adapter
    known = ", ".join(a.name for a in list_adapters(settings)) or "none yet (fine-tune one first)"
    raise AdapterError(f"No adapter named {name!r}. Available: {known}.")


def publish_adapter(staging: Path, job, metrics: dict, settings: Settings | None = None) -> Path:
    """Copy a saved adapter into the adapters folder under the job's name, in one rename."""
    config_path = staging / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = job.base_model  # the id users know, not this machine's path
    config_path.write_text(json.dumps(config, indent=2))
    (staging / TRAINING_RECORD).write_text(json.dumps(
        {"job": job.id, "base_model": job.base_model, "method": job.method, "dataset": job.dataset_name,
         "settings": job.settings.to_dict(), "metrics": metrics}, indent=2))

    target = adapters_dir(settings) / job.adapter_name
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{job.adapter_name}-", dir=target.parent))
    try:
        shutil.copytree(staging, incoming, dirs_exist_ok=True)
        if target.exists():
            raise FileExistsError(f"An adapter named {job.adapter_name!r} appeared while this job ran; "
                                  f"this one is kept in {staging}.")
        incoming.rename(target)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return target


def adapter_record(name: str, settings: Settings | None = None) -> dict:
    """The job settings and final metrics saved with an adapter (empty for adapters made elsewhere)."""
    path = find_adapter(name, settings).path / TRAINING_RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def zip_adapter(name: str, settings: Settings | None = None) -> bytes:
    folder = find_adapter(name, settings).path
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, Path(name) / file.relative_to(folder))
    return buffer.getvalue()


def delete_adapter(name: str, settings: Settings | None = None) -> None:
    shutil.rmtree(find_adapter(name, settings).path)


def merge_adapter(name: str, output: Path | None = None, settings: Settings | None = None) -> Path:
    """Fold the adapter into full-precision base weights and save a standalone safetensors model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = find_adapter(name, settings)
    base_path = resolve_model_path(adapter.base_model or "", settings)
    output = output or models_dir(settings) / "merged" / name
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype="float32")
    merged = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    staging = Path(tempfile.mkdtemp(prefix=f".merging-{name}-", dir=output.parent if output.parent.exists() else None))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(adapter.path if (adapter.path / "tokenizer_config.json").exists() else base_path
                                      ).save_pretrained(staging)
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            shutil.rmtree(output)
        shutil.move(str(staging), output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
