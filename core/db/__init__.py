"""Database access: the engine (embedded or external Postgres) and migrations; each capability writes its own SQL."""

from core.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
