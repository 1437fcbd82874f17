"""Language models: the registry (what exists, where), loading with adapters, streaming generation."""

from core.models.generation import Generation, GenerationStats, count_chat_tokens, stream_chat
from core.models.loading import NO_ADAPTER, AdapterError, LoadedModel, load_model
from core.models.registry import BUNDLED_MODEL, PRESETS, ModelNotAvailable, resolve_model_path

__all__ = [
    "BUNDLED_MODEL", "NO_ADAPTER", "PRESETS", "AdapterError", "Generation", "GenerationStats", "LoadedModel",
    "ModelNotAvailable", "count_chat_tokens", "load_model", "resolve_model_path", "stream_chat",
]
