"""Cross-encoder reranking: a collection may name a model that rescores the best hits of its searches.

An embedding model reads the query and each chunk apart; a cross-encoder reads each (query, passage) pair
together, which orders the top of a list better but costs one forward pass per pair. So it only rescores
the best `rerank_candidates` hits, after fusion, and only for collections that name a reranker: no reranker
ships with the app, so the stage is off by default. The setting lives with the collection, and the stage
runs inside `core.documents.search.search`, so RAG and every other caller get it without asking.

Models load like embedding models (core.documents.embeddings): a folder under the model roots or a hub id
already in the local Hugging Face cache, never downloaded, no repository code; a few stay loaded.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text

from core.config import Settings, get_settings
from core.db import Database
from core.documents.embeddings import bitsandbytes_deferred, remote_code_files
from core.documents.library import get_collection
from core.errors import UserError
from core.security.model_sources import absolute_if_allowed_folder, locate_model

# Rerankers kept in memory per process (a collection rarely changes its reranker; two covers a switch).
_MAX_LOADED = 2


class RerankModelError(UserError):
    """The reranking model cannot be used here; the message says what to do."""


@dataclass
class Reranker:
    name: str
    model: object  # sentence_transformers.CrossEncoder; typed loosely to keep torch out of import time

    def scores(self, query: str, passages: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One relevance score per passage, higher is better: the model's raw logit, since a sigmoid
        squashes confident scores into ties at 1.0."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        import torch

        scores = self.model.predict(
            [(query, passage) for passage in passages], batch_size=batch_size, show_progress_bar=False,
            activation_fn=torch.nn.Identity(), convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(passages))


_lock = threading.Lock()
_loaded: OrderedDict[str, Reranker] = OrderedDict()  # least recently used first


def load_reranker(name: str, *, settings: Settings | None = None) -> Reranker:
    """Load the cross-encoder `name` once per process; RerankModelError when it is not on this machine,
    runs repository code, or scores more than one label."""
    settings = settings or get_settings()
    name = (name or "").strip()
    with _lock:
        if name in _loaded:
            _loaded.move_to_end(name)
            return _loaded[name]
        path = locate_model(name, settings=settings, error=RerankModelError)
        needs = remote_code_files(path)
        if needs:
            raise RerankModelError(
                f"Reranking model {name!r} runs Python code from its repository ({', '.join(needs)}), which is "
                "refused for rerankers; choose a plain cross-encoder (BERT-like, one output)."
            )
        model = _load_cross_encoder(name, str(path))
        labels = int(model.num_labels)
        if labels != 1:
            raise RerankModelError(
                f"{name!r} is a classifier with {labels} outputs, not a reranker: a cross-encoder for reranking gives "
                "one relevance score per (query, passage) pair (e.g. cross-encoder/ms-marco-MiniLM-L6-v2, BAAI/bge-reranker-base)."
            )
        while len(_loaded) >= _MAX_LOADED:
            _loaded.popitem(last=False)
            gc.collect()
        _loaded[name] = Reranker(name=name, model=model)
        return _loaded[name]


def _load_cross_encoder(name: str, path: str):
    with bitsandbytes_deferred():
        from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(path, device="cpu", local_files_only=True)
    except Exception as error:  # the libraries raise OSError, ValueError, HFValidationError...
        raise RerankModelError(
            f"Reranking model {name!r} could not be loaded offline ({type(error).__name__}: {error}). Use a folder with "
            "a sentence-transformers cross-encoder under the model roots, or a hub id already in the Hugging Face cache."
        ) from error


def set_collection_reranker(db: Database, collection: str, model: str | None, *,
                            settings: Settings | None = None) -> str | None:
    """Rerank `collection`'s searches with `model` from now on, or stop (None). The model is loaded first,
    so one that cannot run here is never recorded. Returns what the collection now records."""
    settings = settings or get_settings()
    info = get_collection(db, collection)
    model = (model or "").strip() or None
    if model is not None:
        model = absolute_if_allowed_folder(model, settings)  # a job's process may run in another folder
        load_reranker(model, settings=settings)
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE collections SET rerank_model = :m WHERE id = :c"), {"m": model, "c": info.id})
    return model


def collection_reranker(db: Database, collection: str) -> str | None:
    """The reranking model `collection` records, or None when its searches return the fused order."""
    info = get_collection(db, collection)
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT rerank_model FROM collections WHERE id = :c"), {"c": info.id}).scalar()


def rerank_order(query: str, passages: Sequence[str], model: str, *, collection: str,
                 settings: Settings | None = None) -> list[tuple[int, float]]:
    """(index, score) of the first `rerank_candidates` passages, best first by the cross-encoder; the
    caller keeps the rest in their order after these. Ties keep the earlier (better fused) passage first."""
    settings = settings or get_settings()
    try:
        reranker = load_reranker(model, settings=settings)
    except RerankModelError as error:
        raise RerankModelError(
            f"Collection {collection!r} reranks its results with {model!r}, which cannot be used here: {error} "
            f"To search without it: python -m core collections rerank {collection!r} --off"
        ) from error
    head = list(passages[: settings.rerank_candidates])
    scores = reranker.scores(query, head, batch_size=settings.rerank_batch_size)
    order = sorted(range(len(head)), key=lambda i: (-float(scores[i]), i))
    return [(i, float(scores[i])) for i in order]
