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


# Capabilities from the bottom up: a package may import its own layer and those below, never above.
LAYERS = [
    {"errors", "formatting", "text", "config", "security"},  # security: hashes, throttle, address rule, data folder
    {"db"},
    {"jobs"},
    {"documents"},
    {"models"},
    {"answers"},
    {"datasets"},
    {"training"},
    {"evaluation"},
    {"ui"},
    {"cli", "__main__"},
]


def _layer(name: str) -> int:
    return next(index for index, members in enumerate(LAYERS) if name in members)


def test_every_core_package_is_in_a_layer():
    names = {p.name.removesuffix(".py") for p in (ROOT / "core").iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__init__.py"}
    assert names <= set().union(*LAYERS), names - set().union(*LAYERS)


def test_capabilities_import_only_downward():
    """Imports inside functions count too: a lazy import upward is still a cycle."""
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        relative = path.relative_to(ROOT / "core")
        if relative.parts[0] in ("migrations", "__init__.py") or "migrations" in relative.parts:
            continue
        source = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core."):
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names if alias.name.startswith("core.")]
            for module in modules:
                target = module.split(".")[1]
                if target != source and _layer(target) > _layer(source):
                    offenders.append(f"{relative} imports {module}")
    assert offenders == []
