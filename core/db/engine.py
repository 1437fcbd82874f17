"""One SQLAlchemy engine per database URL, migrated to the latest schema before first use.

The engine outlives database restarts: the pool pings a connection before handing it out and
reconnects when the server went away; an embedded server that died is started again before the
next connection. A statement cut off by a restart, or a server that cannot be reached, raises
DatabaseUnavailable (a UserError: one readable line for the pages and the CLI, not a traceback).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.pool import NullPool

from core.config import Settings, get_settings
from core.db.embedded import embedded_database_url, ensure_running
from core.db.migrate import upgrade_to_head
from core.errors import UserError

_lock = threading.Lock()
_databases: dict[str, Database] = {}


@dataclass(frozen=True)
class Database:
    """A migrated database and how to describe it to the user."""

    url: str
    embedded: bool
    folder: Path | None = None  # the embedded server's data folder: started again if it died

    @cached_property
    def engine(self) -> Engine:
        engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        event.listen(engine, "connect", _register_vector_type)
        event.listen(engine, "handle_error", _explain_unavailable)
        if self.folder is not None:
            event.listen(engine, "do_connect", self._start_embedded_if_stopped)
        return engine

    def _start_embedded_if_stopped(self, *_connect_args) -> None:
        """Before each new connection (returning None lets SQLAlchemy connect as usual)."""
        ensure_running(self.folder)

    def check(self) -> None:
        """One round trip; DatabaseUnavailable when the server cannot answer now."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @property
    def description(self) -> str:
        """Where the data lives, without the password."""
        url = make_url(self.url)
        if self.embedded:
            return f"embedded Postgres in {url.query.get('host')}"
        where = url.host or (f"socket {url.query['host']}" if "host" in url.query else "localhost")
        return f"Postgres at {where}:{url.port or 5432}/{url.database}"


class DatabaseUnavailable(UserError):
    """The database went away (restarted, stopped, unreachable): nothing to fix in the input, try again."""


_SERVER_GOING_AWAY = ("57P01", "57P02", "57P03")  # admin shutdown, crash shutdown, cannot connect now


def _explain_unavailable(context: ExceptionContext) -> None:
    """Replace a lost or refused connection by DatabaseUnavailable. The pool's own ping is left
    alone: it reconnects by itself; other errors (constraints, syntax, ...) keep their type."""
    error = context.original_exception
    if context.is_pre_ping or not isinstance(error, psycopg.OperationalError):
        return
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if context.connection is None:  # connecting failed
        raise DatabaseUnavailable(
            f"The database cannot be reached ({_describe(context.engine.url)}: {reason}). If it is restarting, "
            "try again in a moment; otherwise check that it runs (DATABASE_URL)."
        )
    if context.is_disconnect or getattr(error, "sqlstate", None) in _SERVER_GOING_AWAY:
        raise DatabaseUnavailable(
            f"The database restarted or stopped while working on this ({reason}); try again. "
            "What was saved before is kept."
        )


def _describe(url) -> str:
    url = make_url(url)
    return url.host or url.query.get("host") or "localhost"


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
    folder = settings.embedded_database_dir if embedded else None
    url = embedded_database_url(folder) if embedded else _normalize(settings.database_url)
    with _lock:
        database = _databases.get(url)
        if database is None:
            # Migrate on a plain engine first: the vector type only exists after the first migration.
            migration_engine = create_engine(url, poolclass=NullPool)
            event.listen(migration_engine, "handle_error", _explain_unavailable)
            try:
                upgrade_to_head(migration_engine)
            finally:
                migration_engine.dispose()
            database = Database(url=url, embedded=embedded, folder=folder)
            _databases[url] = database
    return database


def forget_database(url: str) -> None:
    """Close a database's connections and drop it from the cache (tests drop their databases)."""
    with _lock:
        database = _databases.pop(_normalize(url), None)
    if database is not None:
        database.engine.dispose()
