"""Exporting a merged model into a folder (`adapters merge --output DIR`): only folders the app
exported before are replaced, the model is staged beside the folder (never in the system temp
folder), and the swap by renames leaves a complete export, the old or the new, whatever step a
crash stops it at; the next export cleans up after it. The swap steps run on small folders, the
export itself on a tiny real model and adapter."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_adapter, build_tiny_model

from core.jobs.queue import cancel_job
from core.models.adapters import AdapterError, import_adapter
from core.models.merge_job import (
    EXPORT_MARKER,
    STEPS,
    check_output_folder,
    export_merged,
    recover_export,
    submit_merge,
    swap_into_place,
)


class Crash(Exception):
    """Stops the swap at a step, leaving the folders as a killed process would (the swap cleans nothing up)."""


def fake_export(folder: Path, content: str, marked: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(content)
    (folder / "config.json").write_text("{}")
    if marked:
        (folder / EXPORT_MARKER).write_text("{}")
    return folder


def export_in(folder: Path) -> str | None:
    """Which export `folder` holds whole ('old' or 'new'), or None."""
    weights = folder / "model.safetensors"
    return weights.read_text() if weights.is_file() and (folder / "config.json").is_file() else None


def beside(target: Path) -> list[str]:
    """What lies next to the export in its parent folder (the export itself left out)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def crash_at(step: str):
    def after_step(name: str) -> None:
        if name == step:
            raise Crash(step)

    return after_step


# --- the swap, step by step -------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS[1:])
def test_a_crash_at_any_step_of_the_swap_leaves_a_whole_export_and_the_next_export_cleans_up(tmp_path, step):
    target = fake_export(tmp_path / "export", "old")
    staged = fake_export(tmp_path / "export.partial-7", "new")
    with pytest.raises(Crash):
        swap_into_place(staged, target, "7", after_step=crash_at(step))
    if step == "old moved aside":  # between the renames: both whole, beside the export
        assert not target.exists()
        assert export_in(tmp_path / "export.old-7") == "old" and export_in(staged) == "new"
    else:  # the new one is in place; the old one may still be beside it
        assert export_in(target) == "new"
        assert beside(target) == (["export.old-7"] if step == "new in place" else [])

    recover_export(target)
    assert export_in(target) == ("old" if step == "old moved aside" else "new")
    assert beside(target) == []

    rerun = fake_export(tmp_path / "export.partial-8", "newer")  # the rerun's own staged folder
    swap_into_place(rerun, target, "8")
    assert export_in(target) == "newer" and beside(target) == []


def test_a_crash_before_the_swap_leaves_the_old_export_and_a_partial_folder_the_next_export_removes(tmp_path):
    target = fake_export(tmp_path / "export", "old")
    (tmp_path / "export.partial-3").mkdir()  # a writer killed halfway: an empty or half-written folder
    (tmp_path / "export.partial-3" / EXPORT_MARKER).write_text("{}")
    (tmp_path / "export.partial-3" / "model-00001-of-00002.safetensors").write_text("half")
    assert export_in(target) == "old"
    recover_export(target)
    assert export_in(target) == "old" and beside(target) == []


def test_a_process_killed_between_the_renames_loses_no_export(tmp_path):
    """A real crash: the swap runs in a child process that dies right after moving the old export aside."""
    target = fake_export(tmp_path / "export", "old")
    staged = fake_export(tmp_path / "export.partial-5", "new")
    code = ("import os, sys; from pathlib import Path; from core.models.merge_job import swap_into_place; "
            "swap_into_place(Path(sys.argv[1]), Path(sys.argv[2]), '5', "
            "after_step=lambda step: os._exit(9) if step == 'old moved aside' else None)")
    child = subprocess.run([sys.executable, "-c", code, str(staged), str(target)], cwd=Path(__file__).parents[1],
                           capture_output=True, text=True)
    assert child.returncode == 9, child.stderr
    assert not target.exists() and export_in(tmp_path / "export.old-5") == "old" and export_in(staged) == "new"
    recover_export(target)
    assert export_in(target) == "old" and beside(target) == []


def test_the_cleanup_leaves_a_folder_being_written_and_folders_the_app_did_not_write(tmp_path):
    target = fake_export(tmp_path / "export", "current")
    writing = fake_export(tmp_path / "export.partial-11", "in progress")
    users = fake_export(tmp_path / "export.old-2023", "the user's own backup", marked=False)
    descriptor = os.open(writing, os.O_RDONLY)  # what a live writer holds (the kernel drops it if it dies)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        assert recover_export(target) == []
        assert export_in(writing) == "in progress"
    finally:
        os.close(descriptor)
    assert recover_export(target) == [writing]
    assert export_in(users) == "the user's own backup" and export_in(target) == "current"


def test_an_unmarked_export_of_an_older_version_in_the_apps_own_folder_survives_a_crash_too(tmp_path):
    target = fake_export(tmp_path / "merged" / "my-adapter", "old", marked=False)  # written before the marker existed
    staged = fake_export(tmp_path / "merged" / "my-adapter.partial-4", "new")
    check_output_folder(target, app_owned=True)
    with pytest.raises(Crash):
        swap_into_place(staged, target, "4", after_step=crash_at("old moved aside"))
    recover_export(target)
    assert export_in(target) == "old" and beside(target) == []


def test_only_new_empty_or_app_written_folders_may_be_replaced(tmp_path):
    check_output_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    check_output_folder(fake_export(tmp_path / "exported", "old"))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(AdapterError, match="is a file"):
        check_output_folder(tmp_path / "a-file")
    fake_export(tmp_path / "someone-elses-model", "theirs", marked=False)  # a model folder, but not the app's
    with pytest.raises(AdapterError, match="already holds other files"):
        check_output_folder(tmp_path / "someone-elses-model")


# --- the export, with a tiny real model --------------------------------------------------------


@pytest.fixture(scope="module")
def merge_base(settings) -> str:
    """A tiny model in the app's models folder (where models may be loaded from)."""
    from core.models.registry import models_dir

    return str(build_tiny_model(models_dir(settings) / "tiny-merge-base", "llama"))


@pytest.fixture(scope="module")
def adapter_folder(merge_base, tmp_path_factory) -> Path:
    return build_tiny_adapter(merge_base, tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def adapter(db, adapter_folder) -> str:
    import_adapter(db, adapter_folder, "swap-me")
    return "swap-me"


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """The system temp folder for this test: an export must leave nothing there."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_an_export_is_staged_beside_its_folder_and_replaces_an_earlier_export(db, adapter, adapter_folder, merge_base,
                                                                                  tmp_path, private_tempdir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    target = tmp_path / "exports" / "expert"
    seen = {}

    def look(step: str) -> None:
        seen[step] = beside(target)
        if step == "staged":
            (staged,) = [target.parent / name for name in seen[step]]
            seen["staged folder"] = sorted(p.name for p in staged.iterdir())

    assert export_merged(db, adapter, target, token="1") == target
    marker = json.loads((target / EXPORT_MARKER).read_text())
    assert marker["adapter"] == adapter and marker["base_model"] and marker["adapter_sha256"]
    assert export_merged(db, adapter, target, token="2", after_step=look) == target  # into its own earlier export
    assert seen["staged"] == ["expert.partial-2"] and "model.safetensors" in seen["staged folder"]
    assert seen["old moved aside"] == ["expert.old-2", "expert.partial-2"]
    assert seen["new in place"] == ["expert.old-2"] and seen["old removed"] == []
    assert list(private_tempdir.iterdir()) == [] and beside(target) == []
    inputs = torch.tensor([[1, 10, 11, 12, 13]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(target)(inputs).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merge_base), str(adapter_folder))(inputs).logits
    assert torch.allclose(merged, tuned, atol=1e-4)


def test_a_failed_export_keeps_the_old_one_and_a_folder_of_other_files_is_refused_when_the_job_runs(
        db, adapter, tmp_path, private_tempdir):
    target = tmp_path / "exports" / "expert"
    export_merged(db, adapter, target, token="1")
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(Crash):  # an error after the old export was moved aside: it is put back at once
        export_merged(db, adapter, target, token="2", after_step=crash_at("old moved aside"))
    assert (target / "model.safetensors").read_bytes() == before and beside(target) == []

    mine = tmp_path / "exports" / "my-documents"  # accepted when queued (empty), filled before the job ran
    job = submit_merge(db, adapter, mine)
    assert job.params["output"] == str(mine)
    cancel_job(db, job.id)
    mine.mkdir()
    (mine / "letter.txt").write_text("keep me")
    with pytest.raises(AdapterError, match="already holds other files"):
        export_merged(db, adapter, mine, token="3")
    assert sorted(p.name for p in mine.iterdir()) == ["letter.txt"] and beside(mine) == ["expert"]
    assert list(private_tempdir.iterdir()) == []
