"""An adapter deleted and saved again under the same name is served with its new weights.

A loaded model keeps the adapters it attached, by name; adapters are fetched into a cache folder
named by their content hash (core.jobs.artifacts), so new weights under an old name come with a new
path and the model attaches them again (core.models.loading.use_adapter). This follows one name
through the app's answer path (ask, streamed) and the evaluation's (batched greedy answers), with a
tiny real model and real LoRA weights: the answer after the swap is the new weights' answer."""

from __future__ import annotations

import pytest
from tiny_models import build_tiny_adapter, build_tiny_model

from core.answers.rag import ask
from core.models import load_model
from core.models.adapters import delete_adapter, find_adapter, import_adapter
from core.models.batch import generate_batch

QUESTION = "how often does the pump seal need to be replaced ?"


@pytest.fixture(scope="module")
def base(settings) -> str:
    """A tiny model in the app's models folder (where models may be loaded from)."""
    from core.models.registry import models_dir

    return str(build_tiny_model(models_dir(settings) / "tiny-adapter-cache-base", "llama"))


def answer(db, base: str, adapter: str) -> str:
    return ask(db, QUESTION, use_rag=False, adapter=adapter, model_id=base, max_new_tokens=12).complete().text


def batched_answer(db, base: str, adapter: str) -> str:
    found = find_adapter(db, adapter)
    (result,) = generate_batch(load_model(base), [[{"role": "user", "content": QUESTION}]], max_new_tokens=12,
                               adapter=adapter, adapter_path=found.path)
    return result.text


def test_an_adapter_saved_again_under_its_name_answers_with_the_new_weights(db, base, tmp_path):
    first = build_tiny_adapter(base, tmp_path / "first", seed=1)
    second = build_tiny_adapter(base, tmp_path / "second", seed=2)

    import_adapter(db, first, "expert")
    before = answer(db, base, "expert")
    before_batched = batched_answer(db, base, "expert")
    assert "expert" in load_model(base).adapters  # attached and kept by the loaded model

    delete_adapter(db, "expert")
    import_adapter(db, second, "expert")  # the same name, other weights (as a retrained adapter)
    import_adapter(db, second, "never-seen")  # the same new weights under a name the model has not cached
    after, after_batched = answer(db, base, "expert"), batched_answer(db, base, "expert")

    assert before and after != before, "the old weights answered after the adapter was replaced"
    assert after == answer(db, base, "never-seen")
    assert after_batched != before_batched and after_batched == batched_answer(db, base, "never-seen")
    assert load_model(base).adapters["expert"] == find_adapter(db, "expert").path
