"""Crashes and restarts lose nothing. With real processes, real servers and real signals: an app and
the CLI on one data folder share one embedded server; lock files left by a crash do not stop the
next start; a worker killed mid-job leaves a failed, resumable job with its log, and a new worker
carries on; a process killed while publishing an artifact leaves the old one whole; the database
restarting under a running app (embedded, and external) costs one statement at most."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from training_helpers import make_dataset, wait_for

from core.config import get_settings
from core.db import open_database
from core.db.engine import DatabaseUnavailable, forget_database
from core.jobs.queue import create_job, get_job, job_log_tail, job_metrics, resume_job

ROOT = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def new_folder():
    """Fresh folders the server can reach: run as root, it runs as the `pgserver` user, and pytest's
    own temporary folders are closed to other users whenever any pytest session starts."""
    made: list[Path] = []

    def make() -> Path:
        folder = Path(tempfile.mkdtemp(prefix="es-test-resilience-"))
        folder.chmod(0o755)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def embedded_env(data: Path) -> dict[str, str]:
    """The environment of an app process that uses the embedded server of `data`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EXPERT_STUDIO_DATABASE_URL")}
    return {**env, "EXPERT_STUDIO_DATA_DIR": str(data)}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def postmasters(folder: Path) -> list[int]:
    """The Postgres servers running on the data folder `folder` (its postmasters, not their backends)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and "-D" in cmdline and cmdline[cmdline.index("-D") + 1] == str(folder):
            found.append(process.pid)
    return found


def stop_server(folder: Path) -> None:
    """A clean stop, as an administrator (or a system shutdown) would do it."""
    import pgserver

    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=folder, user="pgserver" if os.geteuid() == 0 else None)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sessions(db, application: str) -> int:
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                                  {"a": application}).scalar()


@pytest.fixture
def embedded(new_folder, monkeypatch):
    """The app's own embedded server in a fresh data folder, opened the way the app opens it."""
    from core.ui.resources import database

    data = new_folder()
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EXPERT_STUDIO_DATA_DIR", str(data))
    get_settings.cache_clear()
    database.clear()
    db = open_database(get_settings())
    yield db
    database.clear()
    forget_database(db.url)
    get_settings.cache_clear()


# --- two processes on one data folder ----------------------------------------------------------


def test_an_app_and_the_cli_on_one_data_folder_share_one_embedded_server(new_folder):
    data = new_folder()
    folder, env, log = data / "postgres", embedded_env(data), data / "worker.log"
    with open(log, "wb") as sink:  # a long-lived app process
        app = subprocess.Popen([sys.executable, "-m", "core", "worker", "--exit-when-idle", "300"], cwd=ROOT, env=env,
                               stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "waiting for jobs" in log.read_text(), timeout=180, message="the app to open the database")
        (server,) = postmasters(folder)
        # Two CLI commands at the same moment, while the app runs: both attach to its server.
        both = [subprocess.Popen([sys.executable, "-m", "core", "db", "info", "--json"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for command in both:
            out, err = command.communicate(timeout=300)
            assert command.returncode == 0, err
            assert json.loads(out)["embedded"] is True and str(folder) in json.loads(out)["database"]
        assert postmasters(folder) == [server] and app.poll() is None

        app.kill()  # SIGKILL: it never takes itself off pgserver's list of the server's processes
        app.wait()
        starts = (folder / "log").read_text().count("starting PostgreSQL")
        after = cli(env, "db", "info", "--json")
        assert after.returncode == 0, after.stderr
        assert (folder / "log").read_text().count("starting PostgreSQL") == starts  # it attached: no second server
    finally:
        app.kill()
        app.wait()
    # The CLI was the last live process: the server stopped with it, the killed app notwithstanding.
    wait_for(lambda: not postmasters(folder), timeout=30, message="the server to stop with its last process")


def test_lock_files_left_by_a_crash_do_not_stop_the_next_start(new_folder):
    data = new_folder()
    folder, env = data / "postgres", embedded_env(data)
    assert cli(env, "db", "info").returncode == 0
    wait_for(lambda: not postmasters(folder), timeout=30, message="the server to stop")
    # After a crash and a reboot, the pid in the server's lock files belongs to some other program.
    squatter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (folder / "postmaster.pid").write_text(f"{squatter.pid}\n{folder}\n1700000000\n5432\n{folder}\n\n0 0\nready\n")
        (folder / ".s.PGSQL.5432.lock").write_text(f"{squatter.pid}\n{folder}\n1700000000\n5432\n{folder}\n")
        result = cli(env, "db", "info", "--json")
        assert result.returncode == 0, result.stderr
        assert alive(squatter.pid)  # the program itself is left alone
    finally:
        squatter.kill()
        squatter.wait()


def test_a_server_that_cannot_start_says_why_in_one_message(new_folder):
    data = new_folder()
    folder, env = data / "postgres", embedded_env(data)
    assert cli(env, "db", "info").returncode == 0
    wait_for(lambda: not postmasters(folder), timeout=30, message="the server to stop")
    with open(folder / "postgresql.conf", "a") as config:
        config.write("shared_buffers = 'a lot'\n")
    result = cli(env, "db", "info")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error: "):]
    assert message.startswith(f"error: The embedded database in {folder} could not start (pg_ctl exited with status 1")
    assert "configuration file" in message and "contains errors" in message  # the end of the server's own log


# --- the database restarting under a running app -------------------------------------------------


def test_the_embedded_server_dying_under_a_running_app_is_started_again(embedded):
    from core.ui.resources import database

    db = embedded
    assert database() == db  # the page's cached handle is the same database
    job = create_job(db, kind="reembed", params={"collection": "kept"}, title="committed before the crash")
    (before,) = postmasters(db.folder)

    outcome: dict[str, BaseException] = {}

    def long_statement():
        try:
            with db.engine.connect() as connection:
                connection.execute(text("SELECT pg_sleep(60)"))
        except BaseException as error:  # noqa: BLE001 - the test looks at it
            outcome["error"] = error

    statement = threading.Thread(target=long_statement)
    statement.start()
    wait_for(lambda: _running_statements(db, "pg_sleep"), message="the statement to run")
    os.kill(before, signal.SIGKILL)  # a crash, in the middle of that statement
    statement.join(timeout=60)
    assert isinstance(outcome.get("error"), DatabaseUnavailable), outcome
    assert str(outcome["error"]).startswith("The database restarted or stopped while working on this")

    # The next statement finds the server started again, with everything committed before.
    assert get_job(db, job.id).title == "committed before the crash"
    (after,) = postmasters(db.folder)
    assert after != before

    stop_server(db.folder)  # a clean stop by someone else: started again just the same
    assert not postmasters(db.folder)
    assert database() == db and get_job(db, job.id).status == "queued"
    assert len(postmasters(db.folder)) == 1


def _running_statements(db, fragment: str) -> int:
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE :q AND pid <> pg_backend_pid()"),
            {"q": f"%{fragment}%"},
        ).scalar()


def test_a_worker_carries_on_when_the_embedded_server_restarts(embedded):
    from core.jobs.worker import live_workers

    db = embedded
    with open(db.folder.parent / "worker.log", "wb") as sink:
        worker = subprocess.Popen([sys.executable, "-m", "core", "worker", "--exit-when-idle", "300"], cwd=ROOT,
                                  env=embedded_env(db.folder.parent), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: live_workers(db), timeout=120, message="the worker to register")
        (server,) = postmasters(db.folder)
        os.kill(server, signal.SIGKILL)
        killed_at = time.time()

        def beat_since_the_crash() -> bool:
            try:
                with db.engine.connect() as connection:
                    return bool(connection.execute(
                        text("SELECT max(heartbeat_at) > to_timestamp(:t) FROM workers WHERE pid = :p"),
                        {"t": killed_at, "p": worker.pid},
                    ).scalar())
            except DatabaseUnavailable:  # a statement that meets the crash itself: the next one works
                return False

        wait_for(beat_since_the_crash, timeout=60, message="the worker to report again after the restart")
        assert worker.poll() is None, (db.folder.parent / "worker.log").read_text()
        assert len(postmasters(db.folder)) == 1  # the two processes started one server again, not two
    finally:
        worker.terminate()
        worker.wait(timeout=60)


@pytest.fixture
def external(new_folder, monkeypatch):
    """A second embedded server used as an external one through DATABASE_URL: the app does not
    manage it (nothing starts it again), as with any Postgres of one's own."""
    import pgserver

    from core.ui.resources import database

    folder = new_folder() / "external"
    server = pgserver.get_server(folder, cleanup_mode="stop")
    monkeypatch.setenv("DATABASE_URL", server.get_uri())
    monkeypatch.setenv("EXPERT_STUDIO_DATA_DIR", str(new_folder()))
    get_settings.cache_clear()
    database.clear()
    db = open_database(get_settings())
    assert not db.embedded
    yield server, db
    database.clear()
    forget_database(db.url)
    get_settings.cache_clear()


def test_an_external_database_restarting_under_a_running_app(external):
    from core.ui.resources import database

    server, db = external
    assert database() == db
    job = create_job(db, kind="reembed", params={"collection": "kept"}, title="committed before the restart")

    stop_server(server.pgdata)
    with pytest.raises(DatabaseUnavailable, match=r"^The database cannot be reached .*try again in a moment"):
        get_job(db, job.id)
    with pytest.raises(DatabaseUnavailable):  # what the app shows instead of a page, for now
        database()

    with server._lock:  # started again by whoever runs it
        server.ensure_postgres_running()
    assert get_job(db, job.id).title == "committed before the restart"  # the pool reconnected by itself
    assert database() == db


def test_other_database_errors_keep_their_type(db):
    with pytest.raises(ProgrammingError), db.engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))


# --- processes killed while they write ---------------------------------------------------------

PUBLISH = """
import sys
from pathlib import Path
from core.db import open_database
from core.jobs.artifacts import publish_folder
publish_folder(open_database(), kind="checkpoint", name=sys.argv[1], folder=Path(sys.argv[2]), replace=True)
"""


def test_a_process_killed_while_publishing_leaves_the_old_artifact_whole(db, settings, tmp_path):
    from core.jobs.artifacts import fetch_folder, folder_sha256, get_artifact, publish_folder

    name = "killed-while-publishing"
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "weights.bin").write_bytes(b"old weights " * 1000)
    (new / "weights.bin").write_bytes(os.urandom(20 * 2**20))  # three parts of at most 8 MiB
    first = publish_folder(db, kind="checkpoint", name=name, folder=old)

    with db.engine.connect() as blocker, blocker.begin():
        # Holding the old blob makes the publisher wait at its last step, dropping that blob, after
        # every part of the new one is written: it is killed there, in the middle of its transaction.
        blocker.execute(text("SELECT 1 FROM artifact_blobs WHERE sha256 = :s FOR SHARE"), {"s": first.sha256})
        publisher = subprocess.Popen([sys.executable, "-c", PUBLISH, name, str(new)], cwd=ROOT,
                                     env={**os.environ, "PGAPPNAME": "killed-publisher"})
        wait_for(lambda: _waiting_on_a_lock(db, "killed-publisher"), timeout=120, message="the publisher to write its parts")
        assert get_artifact(db, "checkpoint", name).sha256 == first.sha256  # readers meanwhile: the old one
        publisher.kill()
        publisher.wait()
    wait_for(lambda: not sessions(db, "killed-publisher"), timeout=30, message="the killed publisher's session to end")

    assert get_artifact(db, "checkpoint", name).sha256 == first.sha256
    with db.engine.connect() as connection:
        left = connection.execute(text("SELECT count(*) FROM artifact_blob_parts WHERE sha256 = :s"),
                                  {"s": folder_sha256(new)}).scalar()
    assert left == 0  # not one part of the new blob
    served = fetch_folder(db, "checkpoint", name, tmp_path / "cache")
    assert (served / "weights.bin").read_bytes() == (old / "weights.bin").read_bytes()

    publish_folder(db, kind="checkpoint", name=name, folder=new, replace=True)  # publishing again just works
    served = fetch_folder(db, "checkpoint", name, tmp_path / "cache")
    assert (served / "weights.bin").read_bytes() == (new / "weights.bin").read_bytes()


def _waiting_on_a_lock(db, application: str) -> bool:
    with db.engine.connect() as connection:
        return bool(connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a AND wait_event_type = 'Lock'"),
            {"a": application},
        ).scalar())


def test_a_killed_worker_fails_its_job_with_its_log_and_a_new_worker_resumes_it(db, settings, tiny_llama):
    from core.training.checkpoints import stored_checkpoint
    from core.training.spec import PRESETS, with_overrides
    from core.training.submit import submit_job

    steps = with_overrides(PRESETS["quick CPU check"].settings, max_steps=60, save_steps=5, eval_steps=0,
                           logging_steps=1, batch_size=2)
    job = submit_job(db, adapter_name="tiny-after-a-crash", dataset=make_dataset(db, "facts-crash"),
                     base_model=tiny_llama, method="lora", settings=steps)
    first = subprocess.Popen([sys.executable, "-m", "core", "worker", "--once"], cwd=ROOT, env={**os.environ},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        wait_for(lambda: stored_checkpoint(db, job.id) and any(line.startswith("step ") for line in job_log_tail(db, job.id, 500)),
                 timeout=180, message="a first stored checkpoint and log lines shipped before the kill")
        training = get_job(db, job.id).pid
        first.kill()  # SIGKILL, in the middle of whatever it was writing
        first.wait()
        wait_for(lambda: not alive(training), timeout=10, message="the training process to die with its worker")

        second = subprocess.Popen([sys.executable, "-m", "core", "worker", "--exit-when-idle", "300"], cwd=ROOT,
                                  env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The new worker notices the dead job of its machine by itself, without waiting for the 45 s timeout.
        wait_for(lambda: get_job(db, job.id).status == "failed", timeout=90, message="the new worker to fail the dead job")
        failed = get_job(db, job.id)
        assert failed.error.startswith("The worker stopped unexpectedly") and "Last log lines:" in failed.error
        assert any(line.startswith("step ") for line in job_log_tail(db, job.id, 500))  # its log is kept

        resume_job(db, job.id)
        wait_for(lambda: get_job(db, job.id).finished, timeout=300, message="the resumed job to finish")
        done = get_job(db, job.id)
        assert done.status == "succeeded", "\n".join([done.error or "", *job_log_tail(db, job.id)])
        log = job_log_tail(db, job.id, 1000)
        assert any(line.startswith("Resuming from checkpoint-") for line in log)
        recorded = [m["step"] for m in job_metrics(db, job.id) if m["loss"] is not None]
        assert recorded == list(range(1, 61))  # no step lost or recorded twice across the crash
    finally:
        first.kill()
        first.wait()
        if second is not None:
            second.terminate()
            second.wait(timeout=60)
