"""Imports point down only: core never imports streamlit outside core/ui, pages never touch the database directly."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_does_not_import_streamlit_outside_core_ui():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "core").rglob("*.py")
        if "ui" not in path.relative_to(ROOT / "core").parts[:1] and "streamlit" in imported_modules(path)
    ]
    assert offenders == []


def test_pages_do_not_talk_to_the_database_directly():
    for path in [ROOT / "streamlit_app.py", *(ROOT / "pages").glob("*.py")]:
        assert not imported_modules(path) & {"sqlalchemy", "psycopg", "pgvector", "sentence_transformers", "torch"}, path


def test_nothing_imports_the_cli():
    for path in (ROOT / "core").rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "core.cli" not in path.read_text(), path


def test_shared_leaf_modules_import_nothing_from_core():
    """errors, formatting and text are used by every layer (core, core/ui, the CLI): they import no core module."""
    for name in ("errors.py", "formatting.py", "text.py"):
        assert "core" not in imported_modules(ROOT / "core" / name), name
