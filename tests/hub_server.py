"""A small Hugging Face Hub on the loopback, for download tests: the URLs and headers huggingface_hub 2.4
asks for, serving the files of local folders.

- GET /api/models/{id}/revision/{rev}: the model's info (id, sha, gated, siblings);
- GET /api/models/{id}/tree/{rev}?recursive=True: its files with sizes (large files as LFS, oid = sha256);
- HEAD|GET /{id}/resolve/{rev}/{path}: X-Repo-Commit, ETag (git blob sha1) and Content-Length; for LFS
  files X-Linked-Etag / X-Linked-Size and a redirect to /cdn/{sha256} on another origin, as the Hub sends to its CDN;
- GET /cdn/{sha256}: the bytes, with Range support (206 + Content-Range).
A gated repository answers its files with 401 and X-Error-Code: GatedRepo. `interrupt` makes the next GET
of a file drop the connection ("drop") or stall until `release` is set ("stall") after some bytes, once.
Every request is recorded in `requests` (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_FROM_BYTES = 100_000  # files at least this big are LFS files, as on the Hub (weights)


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False

    @classmethod
    def from_folder(cls, folder: Path, **kwargs) -> Repo:
        return cls({p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}, **kwargs)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Interrupt:
    path: str
    after_bytes: int
    how: str  # "drop" or "stall"


@dataclass
class HubServer:
    repos: dict[str, Repo]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    interrupt: Interrupt | None = None
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.blobs = {hashlib.sha256(data).hexdigest(): data for repo in self.repos.values() for data in repo.files.values()}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # the connections it cuts on purpose
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        """The same server under another name: huggingface_hub follows redirects on the Hub's own origin only."""
        return f"http://localhost:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def ranges(self, path_end: str) -> list[str | None]:
        """The Range headers of the GETs whose path ends with `path_end`, in order."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith(path_end)]


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if match := re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path):
                return self._info(*match.groups())
            if match := re.fullmatch(r"/api/models/(.+)/tree/([^/]+)", path):
                return self._tree(*match.groups())
            if match := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                data = hub.blobs.get(match.group(1))
                if data is None:
                    return self._error(404, "EntryNotFound")
                return self._bytes(data, {}, body, name=next(
                    (p for repo in hub.repos.values() for p, d in repo.files.items() if d is data), ""))
            for repo_id, repo in hub.repos.items():
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix):
                    revision, _, name = path[len(prefix):].partition("/")
                    return self._resolve(repo_id, repo, revision, name, body)
            self._error(404, "RepoNotFound", "Repository not found")

        def _repo(self, repo_id: str, revision: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            elif revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return None
            return repo

        def _info(self, repo_id: str, revision: str) -> None:
            if (repo := self._repo(repo_id, revision)) is None:
                return
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                        "gated": "manual" if repo.gated else False,
                        "siblings": [{"rfilename": name} for name in repo.files]})

        def _tree(self, repo_id: str, revision: str) -> None:
            if (repo := self._repo(repo_id, revision)) is None:
                return
            entries = []
            for name, data in repo.files.items():
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
                if len(data) >= LFS_FROM_BYTES:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._json(entries)

        def _resolve(self, repo_id: str, repo: Repo, revision: str, name: str, body: bool) -> None:
            if revision not in ("main", repo.commit):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            if repo.gated:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                                     "to it and be authenticated to access it. Please log in.")
            data = repo.files.get(name)
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"'}
            if len(data) >= LFS_FROM_BYTES:
                sha256 = hashlib.sha256(data).hexdigest()
                self.send_response(302)
                for key, value in {**headers, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                                   "Location": f"{hub.cdn_url}/cdn/{sha256}", "Content-Length": "0"}.items():
                    self.send_header(key, value)
                self.end_headers()
                return
            self._bytes(data, headers, body, name=name)

        def _bytes(self, data: bytes, headers: dict, body: bool, name: str) -> None:
            start = 0
            if body and (wanted := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")):
                start = int(wanted.group(1))
            part = data[start:]
            self.send_response(206 if start else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            cut = hub.interrupt
            if cut is not None and name == cut.path and start < cut.after_bytes:
                hub.interrupt = None  # once
                self.wfile.write(part[: cut.after_bytes - start])
                self.wfile.flush()
                if cut.how == "stall":
                    hub.stalled.set()
                    hub.release.wait(timeout=60)
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees the connection end before the body does
                return
            self.wfile.write(part)

        def _json(self, value) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str = "") -> None:
            data = json.dumps({"error": message or code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if message:
                self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

    return Handler
