"""One SQLAlchemy engine per database URL, migrated to the latest schema before first use."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core.config import Settings, get_settings
from core.db.embedded import embedded_database_url
from core.db.migrate import upgrade_to_head

_lock = threading.Lock()
_databases: dict[str, Database] = {}


@dataclass(frozen=True)
class Database:
    """A migrated database and how to describe it to the user."""

    url: str
    embedded: bool

    @cached_property
    def engine(self) -> Engine:
        engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        event.listen(engine, "connect", _register_vector_type)
        return engine

    @property
    def description(self) -> str:
        """Where the data lives, without the password."""
        url = make_url(self.url)
        if self.embedded:
            return f"embedded Postgres in {url.query.get('host')}"
        where = url.host or (f"socket {url.query['host']}" if "host" in url.query else "localhost")
        return f"Postgres at {where}:{url.port or 5432}/{url.database}"


def _register_vector_type(dbapi_connection, _record) -> None:
    from pgvector.psycopg import register_vector

    register_vector(dbapi_connection)


def _normalize(url: str) -> str:
    """Accept the usual postgres:// forms and use the psycopg 3 driver for all of them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def open_database(settings: Settings | None = None) -> Database:
    """The database named by DATABASE_URL, else the embedded server; migrated, cached per URL."""
    settings = settings or get_settings()
    embedded = not settings.database_url
    url = embedded_database_url(settings.embedded_database_dir) if embedded else _normalize(settings.database_url)
    with _lock:
        database = _databases.get(url)
        if database is None:
            # Migrate on a plain engine first: the vector type only exists after the first migration.
            migration_engine = create_engine(url, poolclass=NullPool)
            upgrade_to_head(migration_engine)
            migration_engine.dispose()
            database = Database(url=url, embedded=embedded)
            _databases[url] = database
    return database


def forget_database(url: str) -> None:
    """Close a database's connections and drop it from the cache (tests drop their databases)."""
    with _lock:
        database = _databases.pop(_normalize(url), None)
    if database is not None:
        database.engine.dispose()
