"""The API embedder against a real OpenAI-compatible embeddings server: Infinity (infinity-emb), serving the
bundled MiniLM folder on the loopback. It runs from its own environment, .venv-infinity (scripts/setup.sh
--test installs requirements-infinity.txt there: its numpy, sentence-transformers and transformers pins clash
with the app's). A collection embedded through it must search like the same model loaded locally.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import samples

from core.config import DEFAULT_EMBEDDING_MODEL, get_settings
from core.documents.embedding_api import forget_api_embedders
from core.documents.embeddings import _bundled_minilm
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.documents.search import search

INFINITY = Path(__file__).resolve().parents[1] / ".venv-infinity" / "bin" / "infinity_emb"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def infinity(tmp_path_factory):
    """Infinity serving the bundled MiniLM under its Hub id, on a free loopback port; its base URL."""
    assert INFINITY.exists(), "Infinity is not installed: run `bash scripts/setup.sh --test` (it fills .venv-infinity)."
    port = _free_port()
    log = tmp_path_factory.mktemp("infinity") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "OMP_NUM_THREADS": "1"}
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(INFINITY), "v2", "--model-id", str(_bundled_minilm()), "--served-model-name", DEFAULT_EMBEDDING_MODEL,
             "--host", "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu",
             "--no-bettertransformer", "--batch-size", "16"],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # imports torch and loads the model: seconds idle, a minute on a busy CI
        while True:
            assert server.poll() is None, "Infinity exited:\n" + log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Infinity did not start:\n" + log.read_text()[-3000:]
            time.sleep(1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def infinity_settings(infinity):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OPENAI_API_KEY", raising=False)
        patch.delenv("EXPERT_STUDIO_EMBEDDING_API_KEY", raising=False)
        patch.setenv("EXPERT_STUDIO_EMBEDDING_API_BASE", infinity)
        get_settings.cache_clear()
        forget_api_embedders()
        yield get_settings()
        get_settings.cache_clear()
        forget_api_embedders()


def test_a_collection_embedded_by_a_real_infinity_server_searches_like_the_local_model(db, infinity_settings):
    reference = f"api:{DEFAULT_EMBEDDING_MODEL}"
    create_collection(db, "plant-minilm-local", embedding_model=DEFAULT_EMBEDDING_MODEL)
    created = create_collection(db, "plant-minilm-infinity", embedding_model=reference)
    assert (created.embedding_model, created.embedding_dim) == (reference, 384)
    for name, data in [("pumps.md", samples.MARKDOWN), ("valves.html", samples.HTML), ("memo.txt", samples.TEXT.encode())]:
        for collection in ("plant-minilm-local", "plant-minilm-infinity"):
            outcome = ingest_bytes(db, collection, name, data)
            assert outcome.status == "added", outcome.message

    for question in ["how often should the mechanical seal be replaced", "relief valve pressure", "cooling water"]:
        for mode in ("vector", "hybrid"):
            local = search(db, question, collection="plant-minilm-local", k=5, mode=mode)
            served = search(db, question, collection="plant-minilm-infinity", k=5, mode=mode)
            assert len(local) >= 3
            assert [(h.filename, h.ordinal) for h in served] == [(h.filename, h.ordinal) for h in local]
            assert np.allclose([h.vector_similarity or 0 for h in served], [h.vector_similarity or 0 for h in local],
                               atol=1e-4)
            assert np.allclose([h.score for h in served], [h.score for h in local], atol=1e-4)
