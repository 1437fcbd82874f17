"""Models from the Hugging Face Hub into its local cache, resumable: any hub id (language, embedding or
reranker model), run as a job by core.models.download_job.

Why not snapshot_download alone: huggingface_hub 2.4 writes each file into a temporary file of its own
process and deletes it when that process stops, so a cancelled or killed download of a 7 GB model starts
the file again. Here each file is fetched into `blobs/<etag>.incomplete` of the cache and continued with an
HTTP Range request, by this process after a dropped connection or by the next attempt after a cancel or a
kill; large (LFS) files are checked against their sha256 before they join the cache. huggingface_hub then
links the finished blobs into the snapshot folder as it does for its own downloads, so transformers,
sentence-transformers, `hf` and core.security.model_sources find the model like any other cached one.

Messages say what to do: a gated model (accept its licence, set HF_TOKEN; the token is never shown), the
Hub out of reach (HF_HUB_OFFLINE, or no answer) with how to copy a model in, an id that names no model.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.errors import UserError
from core.formatting import human_size, plural
from core.security.model_sources import is_hub_id, model_roots

# Files other frameworks load (TensorFlow, Flax, ONNX, OpenVINO, Core ML, Rust): never needed here.
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.tflite",
                    "*.mlmodel", "coreml/*"]
# The same weights again in older formats: skipped when the repository has safetensors.
OLDER_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf"]
CHUNK_BYTES = 1 << 20
RETRIES = 5  # dropped connections in a row without a byte received before the file gives up
REPORT_EVERY_SECONDS = 1.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(UserError):
    """A download that cannot go on; the message says why and what to do."""


class HubOffline(DownloadError):
    """The Hub cannot be reached from here (HF_HUB_OFFLINE, or no answer)."""


class GatedModel(DownloadError):
    """The model's authors require each user to accept its licence first."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class RemoteModel:
    """What the Hub says a download of `model_id` at `revision` fetches."""

    model_id: str
    revision: str
    commit: str
    gated: bool
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class DownloadProgress:
    done_bytes: int
    total_bytes: int
    file: str
    bytes_per_second: float | None  # this attempt's pace (bytes resumed from disk not counted)
    eta_seconds: float | None


# --- where, and whether the Hub can be reached ------------------------------------------------------------

def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it when this process started (it refuses every request then)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _storage_folder(model_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache_dir() / repo_folder_name(repo_id=model_id, repo_type="model")


def copy_in_instructions(model_id: str, settings: Settings | None = None) -> str:
    roots = ", ".join(str(root) for root in model_roots(settings))
    folder = _storage_folder(model_id).name
    return (f"To use {model_id} without the Hub: on a machine with internet run `hf download {model_id}`, then copy its "
            f"cache folder ({folder}, under ~/.cache/huggingface/hub there) into {hub_cache_dir()} here; or copy the "
            f"model's folder (config.json, weights, tokenizer) under a model root: {roots}.")


OFFLINE_SETTING = "HF_HUB_OFFLINE is set"
ALLOW_DOWNLOADS = ("To download here, start the app and its worker with HF_HUB_OFFLINE=0 in their environment (the app "
                   "sets HF_HUB_OFFLINE=1 unless told otherwise, and docker-compose.yml sets it too).")


def offline_message(model_id: str, reason: str, settings: Settings | None = None) -> str:
    how = f"{ALLOW_DOWNLOADS} " if reason == OFFLINE_SETTING else ""
    return (f"The Hugging Face Hub cannot be reached from here ({reason}), so {model_id} cannot be downloaded. {how}"
            + copy_in_instructions(model_id, settings))


def gated_message(model_id: str) -> str:
    from huggingface_hub import get_token

    token = ("HF_TOKEN is set, but its account has no access to it yet (or the token is not valid)." if get_token()
             else "No HF_TOKEN is set here.")
    return (f"{model_id} is a gated model: its authors ask each user to accept its licence first. Accept it on "
            f"{hub_endpoint()}/{model_id} while signed in, then set HF_TOKEN in this app's environment to an access "
            f"token (read) of that account, and download again. {token}")


def validate_model_id(model_id: str) -> str:
    model_id = (model_id or "").strip()
    if not model_id:
        raise DownloadError("Type a Hugging Face model id, such as microsoft/Phi-3-mini-4k-instruct.")
    if not is_hub_id(model_id):
        raise DownloadError(f"{model_id!r} is not a Hugging Face model id: write it as on its Hub page, org/name "
                            "(letters, digits, '-', '_', '.'), such as microsoft/Phi-3-mini-4k-instruct.")
    return model_id


def validate_revision(revision: str | None) -> str:
    revision = (revision or "").strip() or "main"
    if len(revision) > 200 or any(c.isspace() for c in revision) or ".." in revision:
        raise DownloadError(f"{revision[:80]!r} is not a revision: give a branch, a tag or a commit hash (default main).")
    return revision


def explain(error: BaseException, model_id: str, revision: str = "main",
            settings: Settings | None = None) -> DownloadError | None:
    """A Hub error as the message a user acts on; None for errors that are not the Hub's."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, DownloadError):
        return error
    if isinstance(error, OfflineModeIsEnabled):
        return HubOffline(offline_message(model_id, OFFLINE_SETTING, settings))
    if isinstance(error, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ProxyError)):
        return HubOffline(offline_message(model_id, f"{hub_endpoint()} did not answer", settings))
    if isinstance(error, GatedRepoError):
        return GatedModel(gated_message(model_id))
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(f"{model_id} has no revision {revision!r} on the Hub: give a branch, tag or commit "
                             "it has (default main).")
    if isinstance(error, RepositoryNotFoundError):
        return DownloadError(f"There is no model {model_id!r} on the Hub (or it is private: then set HF_TOKEN to a "
                             "token of an account with access). Check the id on the model's Hub page: org/name.")
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return DownloadError(f"The Hub refused access to {model_id} (HTTP {status}): check HF_TOKEN; a token of an "
                                 "account with access to the model is needed.")
        if status >= 500 or status == 429:
            return DownloadError(f"The Hub could not serve {model_id} just now (HTTP {status}); try again later: "
                                 "the download continues from what it has.")
    if isinstance(error, httpx2.TransportError):
        return DownloadError(f"The connection to the Hub broke off while downloading {model_id} ({type(error).__name__})"
                             "; try again: the download continues from what it has.")
    return None


def _translated(call: Callable, model_id: str, revision: str, settings: Settings | None):
    try:
        return call()
    except Exception as error:
        better = explain(error, model_id, revision, settings)
        if better is None or better is error:
            raise
        raise better from error


# --- what to fetch --------------------------------------------------------------------------------------

def inspect_model(model_id: str, revision: str = "main", *, timeout: float = 5.0,
                  settings: Settings | None = None) -> RemoteModel:
    """Ask the Hub what a download fetches (also the quick check that it can be reached, the id exists, and
    a gated model has a token to try). Raises HubOffline, GatedModel or DownloadError."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.hf_api import RepoFile

    model_id, revision = validate_model_id(model_id), validate_revision(revision)
    if hub_offline():
        raise HubOffline(offline_message(model_id, OFFLINE_SETTING, settings))
    api = HfApi(endpoint=hub_endpoint())

    def ask() -> RemoteModel:
        info = api.model_info(model_id, revision=revision, timeout=timeout)
        if not info.sha:
            raise DownloadError(f"The Hub did not say which commit {model_id} {revision} is; try again later.")
        tree = api.list_repo_tree(model_id, recursive=True, revision=info.sha)
        files = tuple(RemoteFile(f.path, f.size) for f in tree if isinstance(f, RepoFile))
        return RemoteModel(model_id, revision, info.sha, bool(info.gated), files)

    remote = _translated(ask, model_id, revision, settings)
    if remote.gated and not get_token():
        raise GatedModel(gated_message(model_id))
    return remote


def files_to_fetch(files: tuple[RemoteFile, ...] | list[RemoteFile]) -> list[RemoteFile]:
    """The files a model needs here: no other frameworks' weights, no older copies beside safetensors."""
    from huggingface_hub.utils import filter_repo_objects

    skipped = OTHER_FRAMEWORKS + (OLDER_WEIGHTS if any(f.path.endswith(".safetensors") for f in files) else [])
    return list(filter_repo_objects(list(files), ignore_patterns=skipped, key=lambda f: f.path))


# --- the download ---------------------------------------------------------------------------------------

class _Meter:
    """Bytes done of the whole download, and this attempt's pace, reported at most every second."""

    def __init__(self, total: int, report: Callable[[DownloadProgress], None] | None):
        self.total, self.report = total, report
        self.done = 0  # of files finished or partly on disk
        self.fetched = 0  # in this attempt
        self.started = time.monotonic()
        self.last_report = 0.0
        self.file = ""

    def add(self, n: int, *, fetched: bool = True, force: bool = False) -> None:
        self.done += n
        self.fetched += n if fetched else 0
        now = time.monotonic()
        if self.report and (force or now - self.last_report >= REPORT_EVERY_SECONDS):
            self.last_report = now
            elapsed = now - self.started
            speed = self.fetched / elapsed if elapsed > 0 and self.fetched else None
            eta = (self.total - self.done) / speed if speed else None
            self.report(DownloadProgress(self.done, self.total, self.file, speed, eta))


def download_model(model_id: str, revision: str = "main", *, on_progress: Callable[[DownloadProgress], None] | None = None,
                   say: Callable[[str], None] = print, settings: Settings | None = None) -> Path:
    """Download `model_id` into the Hugging Face cache, continuing partial files; returns its snapshot folder.
    `on_progress` hears the bytes done (it may raise to stop: the partial file stays for the next attempt)."""
    from huggingface_hub.utils import build_hf_headers

    remote = inspect_model(model_id, revision, timeout=10, settings=settings)
    files = files_to_fetch(remote.files)
    total = sum(f.size for f in files)
    skipped = len(remote.files) - len(files)
    say(f"{model_id} at {remote.commit[:12]}: {plural(len(files), 'file')}, {human_size(total)}"
        + (f" ({plural(skipped, 'file')} for other frameworks or older copies of the weights left out)." if skipped else "."))
    storage = _storage_folder(model_id)
    headers = build_hf_headers()
    meter = _Meter(total, on_progress)
    for file in files:
        meter.file = file.path
        _translated(lambda file=file: _fetch_blob(storage, remote, file, headers, meter, say), model_id, revision, settings)
        meter.add(0, force=True)
    snapshot = _translated(lambda: _link_snapshot(storage, remote, files), model_id, revision, settings)
    say(f"Downloaded {model_id} ({human_size(total)}) into {snapshot}.")
    return snapshot


def _fetch_blob(storage: Path, remote: RemoteModel, file: RemoteFile, headers: dict, meter: _Meter,
                say: Callable[[str], None]) -> None:
    """One file into `blobs/<etag>` of the cache, through `<etag>.incomplete`, continued where it stopped."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(remote.model_id, file.path, revision=remote.commit, endpoint=hub_endpoint())
    meta = get_hf_file_metadata(url, endpoint=hub_endpoint())
    if not meta.etag or meta.size is None:
        raise DownloadError(f"The Hub did not give the size and checksum of {file.path} of {remote.model_id}; try again later.")
    blob = storage / "blobs" / meta.etag
    if blob.exists():
        meter.add(meta.size, fetched=False)
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + ".incomplete")
    partial.touch()
    with open(partial, "r+b") as out:
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"Another download of {remote.model_id} is writing {file.path} right now; wait for it "
                                "to finish.") from None
        have = out.seek(0, os.SEEK_END)
        if have > meta.size:  # not a prefix of this file: start it again
            out.truncate(0)
            have = out.seek(0)
        if have:
            say(f"{file.path}: continuing from {human_size(have)} of {human_size(meta.size)}.")
        meter.add(have, fetched=False)
        failures = 0
        while have < meta.size:
            before = have
            try:
                have = _stream_into(out, meta.location, headers, have, meta.size, meter)
            except Exception as error:
                import httpx2

                if not isinstance(error, (httpx2.TransportError, httpx2.StreamError)):
                    raise
                failures = 0 if have > before else failures + 1
                have = out.seek(0, os.SEEK_END)
                if failures >= RETRIES:
                    raise
                say(f"{file.path}: the connection broke off at {human_size(have)} ({type(error).__name__}); continuing.")
                time.sleep(min(failures, 5))
                continue
            if have < meta.size:  # the server ended the response early without an error
                failures += 1
                if failures >= RETRIES:
                    raise DownloadError(f"The Hub kept ending {file.path} early; try again later: the download "
                                        "continues from what it has.")
        out.flush()
        os.fsync(out.fileno())
    if _SHA256.match(meta.etag) and _sha256(partial) != meta.etag:
        partial.unlink()
        raise DownloadError(f"{file.path} of {remote.model_id} arrived damaged (its checksum differs), so it was "
                            "removed; download again to fetch it anew.")
    os.replace(partial, blob)


def _stream_into(out, url: str, headers: dict, start: int, size: int, meter: _Meter) -> int:
    """GET from byte `start` (a Range request) into `out`; returns the bytes of the file now on disk."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    request_headers = {**headers, "Accept-Encoding": "identity"}
    if start:
        request_headers["Range"] = f"bytes={start}-"
    with get_session().stream("GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                              follow_redirects=True) as response:
        hf_raise_for_status(response)
        if start and response.status_code != 206:  # the server sent the whole file: take it from the start
            out.seek(0)
            out.truncate()
            meter.add(-start, fetched=False)
            start = 0
        elif start and not (response.headers.get("Content-Range") or "").startswith(f"bytes {start}-"):
            raise DownloadError(f"The Hub answered a request for the rest of a file with other bytes "
                                f"({response.headers.get('Content-Range')!r}); try again later.")
        out.seek(start)
        for chunk in response.iter_bytes():  # as it arrives: what came before a stall is on disk too
            if start + len(chunk) > size:
                raise DownloadError(f"The Hub sent more bytes than the file has ({human_size(size)}); try again later.")
            out.write(chunk)
            out.flush()  # what arrived is on disk for the next attempt, even if this process is killed
            start += len(chunk)
            meter.add(len(chunk))
    return start


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK_BYTES * 8):
            digest.update(block)
    return digest.hexdigest()


def _link_snapshot(storage: Path, remote: RemoteModel, files: list[RemoteFile]) -> Path:
    """huggingface_hub links the finished blobs into `snapshots/<commit>/` (nothing is downloaded again);
    `refs/<revision>` then names the commit, so the model loads offline by its id."""
    from huggingface_hub import hf_hub_download

    for file in files:
        hf_hub_download(remote.model_id, file.path, revision=remote.commit, endpoint=hub_endpoint())
    if remote.revision != remote.commit:
        ref = storage / "refs" / remote.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        staged = ref.with_name(f".{ref.name}.{os.getpid()}")
        staged.write_text(remote.commit)
        os.replace(staged, ref)
    snapshot = storage / "snapshots" / remote.commit
    snapshot.mkdir(parents=True, exist_ok=True)  # a repository without files still gets its folder
    return snapshot
