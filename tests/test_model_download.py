"""Downloads from the Hugging Face Hub, against a real HTTP server on the loopback (tests/hub_server.py)
that answers as the Hub does: jobs through the real worker on the real database fill the Hugging Face cache
so that the model loads offline; a dropped connection and a killed job continue from the partial file with
the same bytes; gated models, an offline machine and bad ids get messages that say what to do."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import streamlit as st
from hub_server import HubServer, Interrupt, Repo
from huggingface_hub import constants
from streamlit.testing.v1 import AppTest
from training_helpers import wait_for

from core.cli import main
from core.jobs.queue import delete_job, get_job, job_log_tail, list_jobs, resume_job
from core.jobs.worker import run_worker
from core.models import load_model
from core.models.download import DownloadError, GatedModel, HubOffline, download_model
from core.models.download_job import submit_download

MODEL = "tiny-org/tiny-llama"
GATED = "gated-org/gated-llama"
WEIGHTS = "model.safetensors"
APP = "../streamlit_app.py"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Repo:
    """A tiny Llama whose weights (~5 MB) are big enough to be cut off mid-file."""
    from tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("hub-tiny-llama"), "llama", hidden_size=256)
    repo = Repo.from_folder(folder)
    repo.files["onnx/model.onnx"] = b"other framework" * 10  # left out by the download
    assert len(repo.files[WEIGHTS]) > 4 * 2**20
    return repo


@pytest.fixture
def hub(tiny_repo):
    with HubServer({MODEL: tiny_repo, GATED: Repo(dict(tiny_repo.files), gated=True)}) as server:
        yield server


def point_at(monkeypatch, endpoint: str, cache_home: Path, offline: bool = False) -> Path:
    """The Hub settings a download needs, for this process (huggingface_hub read them at import) and for
    the job processes the worker starts (their environment)."""
    for name, value in {"HF_HUB_OFFLINE": "1" if offline else "0", "HF_ENDPOINT": endpoint, "HF_HOME": str(cache_home),
                        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(cache_home / "stored_tokens"))
    return cache_home / "hub"


@pytest.fixture
def online(monkeypatch, tmp_path, hub, db) -> Path:
    """The Hub reachable at the loopback server; returns the Hugging Face cache folder."""
    with db.engine.begin() as connection:  # no job of another test left for the worker
        connection.exec_driver_sql("UPDATE jobs SET status = 'cancelled' WHERE status IN ('queued', 'running')")
    return point_at(monkeypatch, hub.url, tmp_path / "hf")


def run_one_job(db) -> None:
    worker = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True, "poll_seconds": 0.2}, daemon=True)
    worker.start()
    worker.join(timeout=180)
    assert not worker.is_alive()


def open_models_page() -> AppTest:
    st.cache_resource.clear()  # the app's cached Database must follow this module's settings
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.exception, at.exception
    return at


def blobs(cache: Path) -> dict[str, bytes]:
    folder = cache / f"models--{MODEL.replace('/', '--')}" / "blobs"
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_download_job_fills_the_cache_through_a_dropped_connection_and_the_model_loads_offline(
        db, online, hub, tiny_repo, monkeypatch):
    weights = tiny_repo.files[WEIGHTS]
    hub.interrupt = Interrupt(WEIGHTS, after_bytes=1_500_000, how="drop")
    job = submit_download(db, MODEL)
    assert job.kind == "download" and job.status == "queued" and job.title.startswith(f"Download {MODEL}, ")

    run_one_job(db)
    job = get_job(db, job.id)
    log = "\n".join(job_log_tail(db, job.id, 40))
    assert job.status == "succeeded", (job.error, log)
    # the connection dropped once mid-file: the same process asked for the rest with a Range request
    assert hub.ranges(f"/cdn/{sha256(weights)}") == [None, "bytes=1500000-"]
    assert "connection broke off" in log
    assert blobs(online)[sha256(weights)] == weights
    assert not list(online.rglob("*.incomplete"))
    assert not list(online.rglob("*.onnx"))  # another framework's weights are left out
    assert job.progress["done"] == job.progress["total"] and job.progress["unit"] == "MB"
    snapshot = Path(job.result["path"])
    assert snapshot.name == tiny_repo.commit and (snapshot / WEIGHTS).read_bytes() == weights

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing more from the Hub: it loads from the cache
    loaded = load_model(MODEL)
    assert sum(p.numel() for p in loaded.model.parameters()) > 10**6


def test_a_killed_download_resumes_from_its_partial_file_with_the_same_bytes(db, online, hub, tiny_repo):
    weights = tiny_repo.files[WEIGHTS]
    stall_at = 2 * 2**20
    hub.interrupt = Interrupt(WEIGHTS, after_bytes=stall_at, how="stall")
    job = submit_download(db, MODEL)
    worker = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True, "poll_seconds": 0.2}, daemon=True)
    worker.start()
    wait_for(hub.stalled.is_set, timeout=120, message="the transfer to reach the stall")
    partial = online / f"models--{MODEL.replace('/', '--')}" / "blobs" / f"{sha256(weights)}.incomplete"
    wait_for(lambda: partial.exists() and partial.stat().st_size == stall_at, timeout=60,
             message="the bytes before the stall to reach the partial file")
    pid = wait_for(lambda: (p := get_job(db, job.id).pid) not in (None, os.getpid()) and p, timeout=30,
                   message="the worker to record the job's process")
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=60)
    assert get_job(db, job.id).status == "failed"
    assert partial.stat().st_size == stall_at  # kept for the next attempt
    hub.release.set()

    resume_job(db, job.id)
    run_one_job(db)
    job = get_job(db, job.id)
    assert job.status == "succeeded", (job.error, job_log_tail(db, job.id, 20))
    assert hub.ranges(f"/cdn/{sha256(weights)}") == [None, f"bytes={stall_at}-"]
    assert "continuing from 2.0 MB" in "\n".join(job_log_tail(db, job.id, 40))
    assert blobs(online)[sha256(weights)] == weights
    assert not partial.exists()


def test_a_damaged_partial_file_fails_its_checksum_and_is_fetched_anew(online, tiny_repo):
    weights = tiny_repo.files[WEIGHTS]
    blobs_folder = online / f"models--{MODEL.replace('/', '--')}" / "blobs"
    blobs_folder.mkdir(parents=True)
    partial = blobs_folder / f"{sha256(weights)}.incomplete"
    partial.write_bytes(b"\0" * 2**20)  # not what the file starts with
    lines = []
    with pytest.raises(DownloadError, match=f"{WEIGHTS} of {MODEL} arrived damaged"):
        download_model(MODEL, say=lines.append)
    assert "model.safetensors: continuing from 1.0 MB of 4.7 MB." in lines
    assert not partial.exists()
    folder = download_model(MODEL, say=lines.append)
    assert (folder / WEIGHTS).read_bytes() == weights


def test_a_gated_model_says_to_accept_its_licence_and_set_hf_token_never_showing_it(db, online, monkeypatch):
    jobs_before = len(list_jobs(db))
    with pytest.raises(GatedModel) as refused:  # no token: answered before any job is queued
        submit_download(db, GATED)
    message = str(refused.value)
    assert GATED in message and "gated" in message and "accept its licence" in message and "HF_TOKEN" in message
    assert len(list_jobs(db)) == jobs_before

    secret = "hf_" + "s3cr3t" * 6  # a token whose account has not accepted the licence: the job finds out
    monkeypatch.setenv("HF_TOKEN", secret)
    job = submit_download(db, GATED)
    run_one_job(db)
    job = get_job(db, job.id)
    assert job.status == "failed"
    assert f"{GATED} is a gated model" in job.error and "HF_TOKEN is set, but its account has no access" in job.error
    everything = job.error + "\n".join(job_log_tail(db, job.id, 200)) + str(job.progress) + str(job.params)
    assert secret not in everything and "s3cr3t" not in everything


def test_offline_the_download_is_refused_at_once_with_how_to_copy_a_model_in(db, monkeypatch, tmp_path, settings, capsys):
    point_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "hf", offline=True)
    jobs_before = len(list_jobs(db))
    with pytest.raises(HubOffline) as refused:
        submit_download(db, MODEL)
    message = str(refused.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE is set" in message and "HF_HUB_OFFLINE=0" in message
    assert f"hf download {MODEL}" in message and "models--tiny-org--tiny-llama" in message
    assert str(settings.models_dir.resolve()) in message  # or a model folder under a model root
    assert len(list_jobs(db)) == jobs_before

    at = open_models_page()  # the page says so before anything is tried, and refuses at once
    assert "so nothing can be downloaded here" in at.warning[0].value
    at.text_input(key="download_model_id").set_value(MODEL).run()
    at.button(key="download_start").click().run()
    assert "cannot be reached from here" in at.error[0].value
    assert len(list_jobs(db)) == jobs_before

    assert main(["models", "download", MODEL]) == 2
    assert "error: The Hugging Face Hub cannot be reached from here (HF_HUB_OFFLINE is set)" in capsys.readouterr().err

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    point_at(monkeypatch, closed, tmp_path / "hf")
    with pytest.raises(HubOffline, match=f"cannot be reached from here \\({closed} did not answer\\)"):
        submit_download(db, MODEL)
    assert len(list_jobs(db)) == jobs_before


def test_bad_ids_and_revisions_get_clear_messages(db, online):
    with pytest.raises(DownloadError, match="is not a Hugging Face model id: write it as on its Hub page"):
        submit_download(db, "../etc/passwd")
    with pytest.raises(DownloadError, match="Type a Hugging Face model id"):
        submit_download(db, "  ")
    with pytest.raises(DownloadError, match="There is no model 'nobody/nothing' on the Hub"):
        submit_download(db, "nobody/nothing")
    with pytest.raises(DownloadError, match=f"{MODEL} has no revision 'v9' on the Hub"):
        submit_download(db, MODEL, "v9")


def test_the_cli_queues_a_download_and_follows_it(db, online, capsys):
    code = main(["models", "download", MODEL, "--no-wait"])
    assert code == 0
    assert "Queued job" in capsys.readouterr().out
    run_one_job(db)
    job = list_jobs(db, 1, kind="download")[0]
    assert job.status == "succeeded" and job.params == {"model_id": MODEL, "revision": "main"}
    assert main(["models", "download"]) == 2
    assert "needs a Hugging Face model id" in capsys.readouterr().err


def test_the_models_page_lists_presets_and_shows_a_download_to_its_end(db, online, monkeypatch):
    monkeypatch.setattr("core.ui.tracked_jobs.ensure_local_worker", lambda db: None)  # the test runs the worker
    for job in list_jobs(db, kind="download"):  # the page shows this test's download only
        delete_job(db, job.id)
    at = open_models_page()
    presets = at.dataframe[0].value
    assert "microsoft/Phi-3-mini-4k-instruct" in list(presets["model"])

    at.text_input(key="download_model_id").set_value("not an id!").run()
    at.button(key="download_start").click().run()
    assert "is not a Hugging Face model id" in at.error[0].value

    at.text_input(key="download_model_id").set_value(MODEL).run()
    at.button(key="download_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.get("progress")  # the job's live view
    assert list_jobs(db, 1, kind="download")[0].params["model_id"] == MODEL
    run_one_job(db)

    refreshed = open_models_page()  # a new browser session finds the job in the table
    assert any("is in the Hugging Face cache" in s.value for s in refreshed.success)
