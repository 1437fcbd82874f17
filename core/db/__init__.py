"""Database access: the engine (embedded or external Postgres), ORM tables and migrations."""

from core.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
