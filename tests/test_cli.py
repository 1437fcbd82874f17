"""python -m core ... calls the same functions as the pages; errors exit 2 with one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import samples

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_search_list_delete(settings, tmp_path, capsys):
    (tmp_path / "pumps.md").write_bytes(samples.MARKDOWN)
    (tmp_path / "memo.txt").write_text(samples.TEXT)
    (tmp_path / "empty.txt").write_bytes(b"")

    assert main(["ingest", str(tmp_path), "--collection", "cli-test"]) == 1  # one file failed, the others went in
    out, err = capsys.readouterr()
    assert "+ pumps.md: added" in out and "+ memo.txt: added" in out
    assert "! empty.txt: is empty" in err
    assert "2 of 3 files added to 'cli-test'" in out

    assert main(["search", "relief valve pressure", "--collection", "cli-test", "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert hit["filename"] == "memo.txt" and "3.5 bar" in hit["text"]

    assert main(["search", "mechanical seal hours", "-c", "cli-test", "--mode", "keyword"]) == 0
    assert "[1] pumps.md (Centrifugal pumps > Maintenance)" in capsys.readouterr().out

    assert main(["documents", "list", "--collection", "cli-test", "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert sorted(d["filename"] for d in documents) == ["memo.txt", "pumps.md"]

    memo = next(d for d in documents if d["filename"] == "memo.txt")
    assert main(["documents", "delete", str(memo["id"])]) == 0
    assert "Deleted 'memo.txt'" in capsys.readouterr().out
    assert main(["documents", "list", "-c", "cli-test"]) == 0
    assert "memo.txt" not in capsys.readouterr().out


def test_user_mistakes_exit_2_with_a_message(settings, capsys):
    assert main(["search", "seal", "--collection", "does-not-exist"]) == 2
    assert "error: No collection named 'does-not-exist'" in capsys.readouterr().err
    assert main(["search", "x" * 10_000, "--collection", "default-or-not"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["documents", "delete", "999999"]) == 2
    assert "No document with id 999999" in capsys.readouterr().err
    assert main(["collections", "delete", "whatever"]) == 2
    assert "--yes" in capsys.readouterr().err


def test_collections_commands(settings, capsys):
    assert main(["collections", "create", "small-chunks", "--chunk-tokens", "64", "--chunk-overlap", "8"]) == 0
    assert "Created 'small-chunks'" in capsys.readouterr().out
    assert main(["collections", "list", "--json"]) == 0
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["small-chunks"]["chunk_tokens"] == 64
    assert main(["collections", "delete", "small-chunks", "--yes"]) == 0


def test_module_entry_point_runs(settings):
    result = subprocess.run(
        [sys.executable, "-m", "core", "db", "info"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    from core.db.migrate import head_revision

    assert f"schema revision {head_revision()}" in result.stdout


def test_datasets_import_and_list(settings, tmp_path, capsys, tiny_llama):
    rows = [{"prompt": "what opens at 3 bar ?", "completion": "the relief valve"},
            {"prompt": "when are bearings checked ?", "completion": ""}]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["datasets", "import", str(path), "--name", "cli-facts", "--model", tiny_llama]) == 2
    out, err = capsys.readouterr()
    assert "line 2: empty answer" in err and "Nothing saved" in err
    assert main(["datasets", "import", str(path), "--name", "cli-facts", "--model", tiny_llama, "--skip-bad-rows"]) == 0
    assert "Saved 'cli-facts'" in capsys.readouterr().out
    assert main(["datasets", "list", "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["cli-facts"]
    assert main(["train", "--dataset", "nope", "--adapter", "a1", "--model", tiny_llama]) == 2
    assert "No dataset named 'nope'" in capsys.readouterr().err
    assert main(["jobs", "cancel", "4242"]) == 2
    assert "No job 4242" in capsys.readouterr().err


def test_commands_print_nothing_about_bitsandbytes(settings):
    """Loading the embedding model imports peft, and peft imports bitsandbytes, whose import warns about the
    optional `kernels` package on CPUs with AVX512-BF16: only 4-bit loading may import it."""
    result = subprocess.run([sys.executable, "-m", "core", "collections", "create", "quiet-imports"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernels" not in result.stderr.lower() and "bitsandbytes" not in result.stderr.lower(), result.stderr


FOUR_BITS_ONLY_WHEN_ASKED = r"""
import json, sys
from pathlib import Path

import core.cli  # noqa: F401
from core.documents.embeddings import load_embedder
from core.models import load_model, stream_chat

base, adapter = sys.argv[1], Path(sys.argv[2])
question = [{"role": "user", "content": "what opens at 3 bar ?"}]
load_embedder().embed(["relief valve"])
list(stream_chat(load_model(base, load_in_4bit=False), question, max_new_tokens=3, adapter="tuned", adapter_path=adapter))
plain = "bitsandbytes" in sys.modules
print("--- 4 bits from here ---", file=sys.stderr, flush=True)
four = load_model(base, load_in_4bit=True)
list(stream_chat(four, question, max_new_tokens=3, adapter="tuned", adapter_path=adapter))
layer = four.model.base_model.model.model.layers[0].self_attn.q_proj
print(json.dumps({"plain": plain, "four_bit": "bitsandbytes" in sys.modules and four.quantized_4bit,
                  "layer": type(layer).__module__ + "." + type(layer).__name__}))
"""


def test_bitsandbytes_is_imported_only_for_four_bits(tmp_path):
    """A fresh process: the embedding model, a plain model and an adapter leave bitsandbytes unimported; a
    4-bit load afterwards still gets it, and the adapter's layers on it are peft's 4-bit ones."""
    from tiny_models import build_tiny_adapter, build_tiny_model

    base = build_tiny_model(tmp_path / "tiny-64", "llama", hidden_size=64)  # bitsandbytes' CPU blocks need 64 inputs
    adapter = build_tiny_adapter(base, tmp_path / "tuned")
    env = {**os.environ, "EXPERT_STUDIO_MODEL_ROOTS": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", FOUR_BITS_ONLY_WHEN_ASKED, str(base), str(adapter)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"plain": False, "four_bit": True, "layer": "peft.tuners.lora.bnb.Linear4bit"}, result.stderr
    before_four_bits = result.stderr.split("--- 4 bits from here ---")[0].lower()
    assert "kernels" not in before_four_bits and "bitsandbytes" not in before_four_bits, before_four_bits
