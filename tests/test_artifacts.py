"""Artifacts in the real database: folders stored as content-addressed blobs and read back through
a per-machine cache; adapters and checkpoints built on them, seen from two data folders at once."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from core.config import Settings
from core.jobs.artifacts import (
    PART_BYTES,
    ArtifactError,
    artifact_cache_dir,
    delete_artifact,
    fetch_folder,
    get_artifact,
    list_artifacts,
    publish_folder,
)
from core.models.adapters import (
    AdapterError,
    adapter_record,
    delete_adapter,
    find_adapter,
    import_local_adapters,
    legacy_adapters_dir,
    list_adapters,
    publish_adapter,
    zip_adapter,
)
from core.training.checkpoints import publish_checkpoint, restore_latest_checkpoint, stored_checkpoint


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_folder(folder: Path, files: dict[str, bytes], empty_dirs=()) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for name in empty_dirs:
        (folder / name).mkdir(parents=True, exist_ok=True)
    return folder


def blob_rows(db, sha256: str) -> tuple[int, int]:
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT (SELECT count(*) FROM artifact_blobs WHERE sha256 = :s), "
                 "(SELECT count(*) FROM artifact_blob_parts WHERE sha256 = :s)"), {"s": sha256}
        ).one()


def other_machine(tmp_path: Path, name: str) -> Settings:
    """Settings of another machine: the same DATABASE_URL (from the environment), its own data folder."""
    data = tmp_path / name
    return Settings(data_dir=data, models_dir=data / "models")


# --- folders ----------------------------------------------------------------------------------


def test_a_folder_round_trips_in_parts_and_the_cache_is_used_without_the_blob(db, tmp_path):
    big = os.urandom(PART_BYTES + 12345)  # more than one part
    files = {"weights.bin": big, "config.json": b'{"r": 8}', "sub/deeper/notes.txt": "Ü ok\n".encode()}
    source = make_folder(tmp_path / "source", files, empty_dirs=["empty"])
    info = publish_folder(db, kind="checkpoint", name="round-trip", folder=source, job_id=7, metadata={"step": 3})
    assert (info.kind, info.name, info.job_id, info.metadata) == ("checkpoint", "round-trip", 7, {"step": 3})
    assert blob_rows(db, info.sha256) == (1, 2) and info.size_bytes > len(big)

    cache = tmp_path / "cache"
    fetched = fetch_folder(db, "checkpoint", "round-trip", cache)
    assert fetched == cache / info.sha256
    assert files_of(fetched) == files and (fetched / "empty").is_dir()
    assert [p.name for p in cache.iterdir()] == [info.sha256]  # no staging folder left behind

    # The same files written again (new times) pack to the same bytes: one blob, shared.
    again = make_folder(tmp_path / "again", files, empty_dirs=["empty"])
    os.utime(again / "config.json", (1, 1))
    same = publish_folder(db, kind="checkpoint", name="round-trip-copy", folder=again)
    assert same.sha256 == info.sha256 and blob_rows(db, info.sha256) == (1, 2)

    # A present cache folder is used without reading the blob: with its parts gone, it still works ...
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM artifact_blob_parts WHERE sha256 = :s"), {"s": info.sha256})
    assert fetch_folder(db, "checkpoint", "round-trip", cache) == fetched
    # ... while a machine without that cache must read it, and a damaged blob is refused, not half-used.
    with pytest.raises(ArtifactError, match="incomplete or damaged"):
        fetch_folder(db, "checkpoint", "round-trip", tmp_path / "fresh-cache")
    assert not any((tmp_path / "fresh-cache").iterdir())


def test_names_are_unique_unless_replaced_and_replaced_bytes_are_deleted(db, tmp_path):
    first = publish_folder(db, kind="adapter", name="replace-me", folder=make_folder(tmp_path / "a", {"f": b"one"}))
    with pytest.raises(ArtifactError, match="'replace-me' already exists"):
        publish_folder(db, kind="adapter", name="replace-me", folder=make_folder(tmp_path / "b", {"f": b"two"}))
    assert get_artifact(db, "adapter", "replace-me").sha256 == first.sha256  # the refused one changed nothing

    second = publish_folder(db, kind="adapter", name="replace-me", folder=tmp_path / "b", replace=True, metadata={"v": 2})
    assert second.sha256 != first.sha256 and second.id == first.id
    assert get_artifact(db, "adapter", "replace-me").metadata == {"v": 2}
    assert blob_rows(db, first.sha256) == (0, 0)  # nothing used the old content any more

    # A blob another artifact still uses survives the replace and the delete of one of them.
    publish_folder(db, kind="checkpoint", name="shares-b", folder=tmp_path / "b")
    publish_folder(db, kind="adapter", name="replace-me", folder=tmp_path / "a", replace=True)
    assert blob_rows(db, second.sha256) == (1, 1)
    delete_artifact(db, "checkpoint", "shares-b")
    assert blob_rows(db, second.sha256) == (0, 0)
    assert "replace-me" in {a.name for a in list_artifacts(db, "adapter")}
    assert get_artifact(db, "checkpoint", "shares-b") is None
    with pytest.raises(ArtifactError, match="No checkpoint named 'shares-b'"):
        delete_artifact(db, "checkpoint", "shares-b")


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        good = tarfile.TarInfo("fine.txt")
        good.size = 2
        archive.addfile(good, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("../escaped.txt"), "unsafe path"),
        (member("sub/../../escaped.txt"), "unsafe path"),
        (member("/tmp/escaped-absolute.txt"), "unsafe path"),
        (member("link", tarfile.SYMTYPE, "/etc/passwd"), "not links"),
        (member("hard", tarfile.LNKTYPE, "fine.txt"), "not links"),
        (member("fifo", tarfile.FIFOTYPE), "not links"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
def test_an_unsafe_stored_archive_is_refused_and_writes_nothing(db, tmp_path, bad, message):
    blob = tar_with(bad, b"evil")
    sha256 = hashlib.sha256(blob).hexdigest()
    name = f"unsafe-{sha256[:8]}"
    with db.engine.begin() as connection:  # stored by hand, as a hostile or broken writer could
        connection.execute(text("INSERT INTO artifact_blobs (sha256, size_bytes) VALUES (:s, :b)"), {"s": sha256, "b": len(blob)})
        connection.execute(text("INSERT INTO artifact_blob_parts (sha256, part, data) VALUES (:s, 0, :d)"), {"s": sha256, "d": blob})
        connection.execute(text("INSERT INTO artifacts (kind, name, sha256, size_bytes) VALUES ('adapter', :n, :s, :b)"),
                           {"n": name, "s": sha256, "b": len(blob)})
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ArtifactError, match=message):
        fetch_folder(db, "adapter", name, cache)
    assert list(cache.iterdir()) == []  # neither the cache folder nor its staging folder
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-absolute.txt").exists()


# --- adapters ---------------------------------------------------------------------------------


def fake_job(job_id: int, adapter_name: str, base_model: str = "base/model") -> SimpleNamespace:
    return SimpleNamespace(id=job_id, adapter_name=adapter_name, base_model=base_model, method="lora",
                           dataset_name="facts", settings={"rank": 8})


def saved_adapter(folder: Path, weights: bytes, base: str = "/machine/b/path/to/base") -> Path:
    return make_folder(folder, {"adapter_config.json": json.dumps({"base_model_name_or_path": base, "r": 8}).encode(),
                                "adapter_model.safetensors": weights})


def test_an_adapter_published_from_one_data_folder_is_listed_and_fetched_from_another(db, tmp_path):
    machine_a, machine_b = other_machine(tmp_path, "a"), other_machine(tmp_path, "b")
    staging = saved_adapter(tmp_path / "staging", b"weights of b")
    published = publish_adapter(db, staging, fake_job(41, "shared-adapter"), {"eval_loss": 0.5}, settings=machine_b)
    assert published.path == artifact_cache_dir(machine_b) / published.sha256 and published.path.is_dir()

    listed = {a.name: a for a in list_adapters(db, machine_a)}
    assert listed["shared-adapter"].base_model == "base/model" and listed["shared-adapter"].path is None
    assert not artifact_cache_dir(machine_a).exists()  # listing fetches nothing
    found = find_adapter(db, "shared-adapter", machine_a)
    assert found.path == artifact_cache_dir(machine_a) / published.sha256
    assert files_of(found.path) == files_of(published.path)
    assert json.loads((found.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "base/model"
    assert json.loads((found.path / "training.json").read_text())["metrics"] == {"eval_loss": 0.5}
    assert adapter_record(db, "shared-adapter")["metrics"] == {"eval_loss": 0.5}
    with io.BytesIO(zip_adapter(db, "shared-adapter", machine_a)) as data:
        import zipfile

        assert "shared-adapter/adapter_model.safetensors" in zipfile.ZipFile(data).namelist()

    # Another job may not take the name; the same job publishing again (resumed) replaces its own.
    with pytest.raises(FileExistsError, match="appeared while this job ran"):
        publish_adapter(db, saved_adapter(tmp_path / "other", b"other"), fake_job(42, "shared-adapter"), {}, machine_a)
    again = publish_adapter(db, saved_adapter(tmp_path / "redo", b"redone"), fake_job(41, "shared-adapter"), {}, machine_a)
    assert again.sha256 != published.sha256
    assert find_adapter(db, "shared-adapter", machine_b).path.name == again.sha256  # not the old cached folder

    delete_adapter(db, "shared-adapter")
    assert "shared-adapter" not in {a.name for a in list_adapters(db)}
    with pytest.raises(AdapterError, match="No adapter named 'shared-adapter'"):
        find_adapter(db, "shared-adapter", machine_a)
    with pytest.raises(AdapterError, match="No adapter named 'shared-adapter'"):
        delete_adapter(db, "shared-adapter")


def test_adapter_folders_of_older_versions_are_imported_once(db, tmp_path):
    machine = other_machine(tmp_path, "legacy")
    old = legacy_adapters_dir(machine)
    saved_adapter(old / "old-adapter", b"old weights", base="HuggingFaceTB/SmolLM2-135M-Instruct")
    (old / "old-adapter" / "training.json").write_text(json.dumps({"metrics": {"eval_loss": 1.25}}))
    saved_adapter(old / ".incoming-half-written", b"partial")  # an older version's unfinished publish
    publish_folder(db, kind="adapter", name="taken", folder=saved_adapter(tmp_path / "taken", b"in the database"))
    saved_adapter(old / "taken", b"another adapter with that name")

    assert import_local_adapters(db, machine) == ["old-adapter"]
    assert adapter_record(db, "old-adapter") == {"metrics": {"eval_loss": 1.25}}
    assert next(a for a in list_adapters(db) if a.name == "old-adapter").base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert files_of(find_adapter(db, "old-adapter", machine).path)["adapter_model.safetensors"] == b"old weights"
    assert (old / ".imported" / "old-adapter" / "adapter_model.safetensors").is_file()  # kept, out of the way
    assert (old / "taken").is_dir()  # the database's "taken" is another adapter: this folder is left alone
    assert files_of(find_adapter(db, "taken", machine).path)["adapter_model.safetensors"] == b"in the database"
    assert get_artifact(db, "adapter", ".incoming-half-written") is None

    delete_adapter(db, "old-adapter")
    assert import_local_adapters(db, machine) == []  # a deleted adapter does not come back at the next start


def test_cli_imports_lists_and_exports_an_adapter(db, tmp_path, capsys):
    from core.cli import main

    folder = saved_adapter(tmp_path / "peft-folder", b"cli weights", base="some/base")
    assert main(["adapters", "import", str(folder), "--name", "cli-adapter"]) == 0
    assert "as adapter 'cli-adapter' (base some/base" in capsys.readouterr().out
    assert main(["adapters", "import", str(folder), "--name", "cli-adapter"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["adapters", "import", str(tmp_path), "--name", "not-an-adapter"]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert main(["adapters", "list", "--json"]) == 0
    listed = {a["name"]: a for a in json.loads(capsys.readouterr().out)}
    assert listed["cli-adapter"]["base_model"] == "some/base"
    assert main(["adapters", "export", "cli-adapter", "--output", str(tmp_path / "x.zip")]) == 0
    assert (tmp_path / "x.zip").stat().st_size > 0


def test_an_adapter_trained_again_under_its_name_is_not_served_from_the_old_weights(db, tmp_path):
    """A loaded model caches attached adapters; the cache path holds the content hash, so new weights
    under the same name mean a new path, and the model attaches them instead of answering with the old."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from tiny_models import build_tiny_model
    from transformers import AutoModelForCausalLM

    from core.models import load_model
    from core.models.loading import use_adapter

    base = str(build_tiny_model(tmp_path / "base", "llama"))

    def lora(target: Path, seed: int) -> Path:
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.5)
        model.save_pretrained(target)
        return target

    inputs = torch.tensor([[1, 10, 11, 12, 13]])
    loaded = load_model(base)

    def logits_with(path: Path):
        with loaded.lock, torch.no_grad():
            use_adapter(loaded, "retrained", path)
            return loaded.model(inputs).logits

    publish_adapter(db, lora(tmp_path / "v1", seed=1), fake_job(51, "retrained", base), {})
    first = find_adapter(db, "retrained")
    before = logits_with(first.path)
    delete_adapter(db, "retrained")
    publish_adapter(db, lora(tmp_path / "v2", seed=2), fake_job(52, "retrained", base), {})
    second = find_adapter(db, "retrained")
    assert second.path != first.path
    after = logits_with(second.path)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(second.path))(inputs).logits
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-5)


# --- checkpoints ------------------------------------------------------------------------------


def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    files = {"adapter_model.safetensors": f"weights at {step}".encode(), "optimizer.pt": os.urandom(256),
             "rng_state.pth": b"rng"}
    if complete:
        files["trainer_state.json"] = json.dumps({"global_step": step}).encode()
    return make_folder(folder / f"checkpoint-{step}", files)


def test_a_job_resumes_from_the_newer_of_the_stored_and_the_local_checkpoint(db, tmp_path):
    job_id = 9001
    assert restore_latest_checkpoint(db, job_id, tmp_path / "nothing") is None

    machine_b = tmp_path / "b" / "checkpoints"
    first = publish_checkpoint(db, job_id, fake_checkpoint(machine_b, 4), step=4)
    newest = fake_checkpoint(machine_b, 8)
    stored = publish_checkpoint(db, job_id, newest, step=8)
    assert stored.name == f"job-{job_id}" and stored.metadata == {"step": 8} and stored.job_id == job_id
    assert blob_rows(db, first.sha256) == (0, 0)  # one checkpoint per job: the older one's bytes are gone
    assert publish_checkpoint(db, job_id, fake_checkpoint(machine_b, 6), step=6).metadata == {"step": 8}
    assert stored_checkpoint(db, job_id).sha256 == stored.sha256  # a late older save does not move the job back

    # Machine A ran the job before: a complete checkpoint-4, and an incomplete checkpoint-8 from a crash.
    machine_a = tmp_path / "a" / "checkpoints"
    fake_checkpoint(machine_a, 4)
    fake_checkpoint(machine_a, 8, complete=False)
    restored = restore_latest_checkpoint(db, job_id, machine_a)
    assert restored == machine_a / "checkpoint-8"
    assert files_of(restored) == files_of(newest)
    assert sorted(p.name for p in machine_a.iterdir()) == ["checkpoint-4", "checkpoint-8"]  # no staging left

    # A local checkpoint newer than the stored one wins, and nothing is read from the database.
    local_newer = fake_checkpoint(machine_a, 12)
    assert restore_latest_checkpoint(db, job_id, machine_a) == local_newer
    assert restore_latest_checkpoint(db, job_id + 1, machine_a) == local_newer  # no stored checkpoint at all

    with pytest.raises(ArtifactError, match="not a complete checkpoint"):
        publish_checkpoint(db, job_id, fake_checkpoint(tmp_path / "c", 20, complete=False), step=20)


# --- pages ------------------------------------------------------------------------------------


def test_the_pages_list_adapters_from_the_database_and_zip_only_on_download(db, tmp_path, tiny_llama, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import core.models.adapters
    from core.config import get_settings

    publish_adapter(db, saved_adapter(tmp_path / "page", b"page weights", base=tiny_llama), fake_job(61, "on-the-page"),
                    {"eval_loss": 0.25})
    zipped = []
    monkeypatch.setattr(core.models.adapters, "zip_adapter", lambda *args, **kwargs: zipped.append(args) or b"zip")
    monkeypatch.setenv("EXPERT_STUDIO_LANGUAGE_MODEL", tiny_llama)
    get_settings.cache_clear()
    st.cache_resource.clear()
    try:
        at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
        at.run()
        at.session_state["ft_open_tab"] = "Adapters"
        at.switch_page("pages/finetune.py").run()
        assert not at.exception
        assert any("**on-the-page**" in m.value for m in at.markdown)
        assert any("eval loss 0.25" in c.value for c in at.caption)
        assert zipped == []  # rendering the list builds no zip: it is made when the button is clicked

        at.switch_page("pages/ask.py").run()
        assert not at.exception
        assert "on-the-page" in at.selectbox(key="ask_adapter").options
    finally:
        get_settings.cache_clear()
