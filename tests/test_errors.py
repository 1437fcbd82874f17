"""User mistakes: every kind is a UserError, the CLI answers each with one line and exit status 2,
the pages show it with st.error; and the small shared helpers (counts, sizes, decoding, context windows)."""

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from core.answers.rag import QuestionError
from core.datasets import DatasetError
from core.documents.embeddings import EmbeddingModelError
from core.documents.errors import IngestError
from core.documents.library import LibraryError
from core.documents.search import QueryError
from core.errors import UserError
from core.formatting import human_size, plural
from core.jobs.queue import JobError
from core.models import AdapterError, ModelNotAvailable
from core.models.context import DEFAULT_CONTEXT_WINDOW, context_window
from core.models.device import choose_device
from core.text import decode_bytes

ROOT = Path(__file__).resolve().parents[1]
USER_MISTAKES = [IngestError, LibraryError, QueryError, EmbeddingModelError, QuestionError, ModelNotAvailable,
                 AdapterError, DatasetError, JobError]
# Raised and caught inside core, never shown on its own (a bad row becomes "line N: <message>").
INTERNAL_VALUE_ERRORS = ["core/datasets/formats.py:RowInvalid"]


@pytest.mark.parametrize("error", USER_MISTAKES, ids=lambda e: e.__name__)
def test_every_user_mistake_is_a_user_error(error):
    assert issubclass(error, UserError) and issubclass(error, ValueError)


def test_no_error_class_in_core_derives_from_value_error_directly():
    """A new error type for user mistakes must derive from UserError, or the CLI and the pages miss it."""
    direct = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "ValueError" for b in node.bases):
                direct.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert sorted(direct) == sorted(["core/errors.py:UserError", *INTERNAL_VALUE_ERRORS])


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """python -m core in its own process (the settings fixture's environment), as a user runs it."""
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["datasets", "import", "missing.jsonl", "--name", "x"], "missing.jsonl: no such file"),
        (["search", "seal", "--collection", "no-such-collection"], "No collection named 'no-such-collection'"),
        (["adapters", "export", "no-such-adapter"], "No adapter named 'no-such-adapter'"),
        (["jobs", "show", "424242"], "No job 424242"),
        (["documents", "chunks", "424242"], "No document with id 424242"),
    ],
    ids=["missing file", "unknown collection", "unknown adapter", "bad job id", "bad document id"],
)
def test_cli_user_mistakes_exit_2_with_one_line(settings, args, expected):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line
    assert result.stdout == ""


def test_every_command_but_the_worker_takes_json():
    from core.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    without = [name for name, parser in commands.choices.items()
               if not any("--json" in a.option_strings for a in parser._actions)]
    assert without == ["worker"]  # as the README says


# --- the pages ---------------------------------------------------------------------------------


def page_with_a_mistake():
    import streamlit as st

    from core.datasets import DatasetError
    from core.ui.errors import user_errors

    with user_errors("Not saved: ") as caught:
        raise DatasetError("A dataset needs a name.")
    st.write(f"after the block, caught: {type(caught.error).__name__}")
    with user_errors(stop=True):
        raise DatasetError("Stop here.")
    st.write("never shown")


def page_with_a_bug():
    from core.ui.errors import user_errors

    with user_errors():
        raise KeyError("a bug, not a user mistake")


def test_pages_show_a_user_error_and_go_on():
    at = AppTest.from_function(page_with_a_mistake).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Not saved: A dataset needs a name.", "Stop here."]
    assert [m.value for m in at.markdown] == ["after the block, caught: DatasetError"]


def test_pages_let_bugs_through():
    at = AppTest.from_function(page_with_a_bug).run()
    assert at.exception and not at.error


# --- helpers ---------------------------------------------------------------------------------


def test_plural():
    assert plural(1, "chunk") == "1 chunk"
    assert plural(0, "chunk") == "0 chunks"
    assert plural(1204, "chunk") == "1,204 chunks"
    assert plural(2, "query", "queries") == "2 queries"
    assert plural(3, "document", bold=True) == "**3** documents"


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (1536, "1.5 KB"), (230 * 2**20, "230.0 MB"),
     (int(3.25 * 2**30), "3.2 GB"), (2048 * 2**30, "2048.0 GB")],
)
def test_human_size(size, shown):
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("text", "encoding", "reported"),
    [
        ("Grüße aus München", "utf-8", "utf-8"),
        ("Grüße aus München", "utf-8-sig", "utf-8-sig"),
        ("Grüße aus München", "utf-16", "utf-16"),
        ("Café crème brûlée, naïve façade", "latin-1", None),  # cp1252 and latin-1 agree on these letters
        ("Quelle température ? Environ 90 °C, pas plus.", "cp1252", "cp1252"),
        ("Привет, как дела? Это тест кодировки.", "cp1251", "cp1251"),
    ],
)
def test_decode_bytes_reads_common_encodings(text, encoding, reported):
    decoded, name = decode_bytes(text.encode(encoding))
    assert decoded == text
    assert name == reported or (reported is None and name in ("cp1252", "latin_1", "iso8859_15"))


@pytest.mark.parametrize("data", [bytes(range(256)) * 20, b"\x00\x01\x02\x03" * 500, b"\xff\xfe\x00\xd8"],
                         ids=["all bytes", "control bytes", "broken utf-16"])
def test_decode_bytes_refuses_binaries(data):
    assert decode_bytes(data) is None


def test_context_window_reads_the_config_and_the_tokenizers_cap():
    assert context_window(SimpleNamespace(max_position_embeddings=8192)) == 8192
    assert context_window(SimpleNamespace(n_positions=1024)) == 1024  # GPT-2 style configs
    assert context_window(SimpleNamespace()) == DEFAULT_CONTEXT_WINDOW
    capped = SimpleNamespace(model_max_length=4096)
    assert context_window(SimpleNamespace(max_position_embeddings=131072), capped) == 4096
    unlimited = SimpleNamespace(model_max_length=int(1e30))  # "no limit" in tokenizer configs
    assert context_window(SimpleNamespace(max_position_embeddings=8192), unlimited) == 8192


def test_choose_device_matches_this_machine():
    import torch

    device, dtype = choose_device()
    expected = ("cuda", {"bfloat16", "float16"}) if torch.cuda.is_available() else ("cpu", {"float32"})
    assert device == expected[0] and dtype in expected[1]
