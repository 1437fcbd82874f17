"""Collections embedded through an OpenAI-compatible /v1/embeddings endpoint (core/documents/embedding_api.py).

A real server (Infinity, in its own environment) is tested in test_embedding_api_infinity.py; what a real server
will not do on demand (rate limits, wrong dimensions, Azure's URL and header) is tested here against a
loopback HTTP server in this file that speaks the documented wire format (OpenAI's, and Azure's URL and header)
and embeds with the same bundled MiniLM through sentence-transformers: every test that uses it says
"loopback_server" in its name. It answers in reverse order (clients must order by `index`), truncates to
`dimensions` like OpenAI's shortened vectors, and can be told to fail the next requests.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import samples
from sqlalchemy import text

from core.cli import main
from core.config import DEFAULT_EMBEDDING_MODEL, Settings, get_settings
from core.documents.embedding_api import (
    ApiEmbedder,
    EmbeddingApiError,
    api_key,
    embedding_reference,
    forget_api_embedders,
    parse_reference,
)
from core.documents.embeddings import EmbeddingModelError, load_embedder
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection, get_collection
from core.documents.search import search

KEY = "sk-test-" + uuid.uuid4().hex  # a key that must never leave the request headers
MINILM = DEFAULT_EMBEDDING_MODEL
API_MINILM = f"api:{MINILM}"


class EmbeddingsServer:
    """A loopback server speaking the OpenAI embeddings wire format, embedding with the bundled MiniLM."""

    def __init__(self):
        self.requests: list[dict] = []  # path, query, headers, body of every request
        self.failures: list[tuple[int, dict, dict]] = []  # (status, headers, body) to answer next, in order
        self.dimension_shift = 0  # return vectors this many dimensions shorter (a server running another model)
        self.model = load_embedder(MINILM).model
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                parts = urlsplit(self.path)
                with server._lock:
                    server.requests.append({"path": parts.path, "query": parse_qs(parts.query),
                                            "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    failure = server.failures.pop(0) if server.failures else None
                if failure is not None:
                    return self._send(*failure)
                if not (parts.path == "/v1/embeddings" or parts.path.startswith("/openai/deployments/")):
                    return self._send(404, {}, {"error": {"message": f"no route {parts.path}"}})
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with server._lock:  # one forward pass at a time, like a single-worker server
                    vectors = server.model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
                if body.get("dimensions"):
                    vectors = vectors[:, : body["dimensions"]]
                    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                if server.dimension_shift:
                    vectors = vectors[:, : vectors.shape[1] - server.dimension_shift]
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                data.reverse()  # the wire format orders by `index`, not by position
                return self._send(200, {}, {"object": "list", "data": data, "model": body.get("model", "deployment"),
                                            "usage": {"prompt_tokens": 0, "total_tokens": 0}})

            def _send(self, status, headers, payload):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.failures.clear()
            self.dimension_shift = 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    server = EmbeddingsServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def api_settings(settings, server):
    """The module's settings pointed at the loopback server, with a key, as get_settings() sees them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OPENAI_API_KEY", raising=False)
        patch.setenv("EXPERT_STUDIO_EMBEDDING_API_BASE", f"{server.base}/v1")
        patch.setenv("EXPERT_STUDIO_EMBEDDING_API_KEY", KEY)
        patch.setenv("EXPERT_STUDIO_EMBEDDING_API_BACKOFF_S", "0")
        get_settings.cache_clear()
        forget_api_embedders()
        yield get_settings()
        get_settings.cache_clear()
        forget_api_embedders()


@pytest.fixture(autouse=True)
def fresh_server(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


def api_embedder(settings: Settings, reference: str = API_MINILM, **changes) -> tuple[ApiEmbedder, list[float]]:
    """An embedder with its own settings; its waits are recorded instead of slept."""
    waits: list[float] = []
    return ApiEmbedder(reference, settings.model_copy(update=changes), sleep=waits.append), waits


def database_text(db) -> str:
    """Every row of every table in the public schema as text: what a key would show up in if it were stored."""
    with db.engine.connect() as connection:
        tables = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        return "\n".join(
            connection.execute(text(f'SELECT coalesce(string_agg(t::text, E\'\\n\'), \'\') FROM "{table}" t')).scalar()
            for table in tables
        )


def test_api_collection_searches_like_the_local_model_through_a_loopback_server(db, api_settings, server, caplog):
    caplog.set_level(logging.DEBUG)
    create_collection(db, "plant-local", embedding_model=MINILM)
    created = create_collection(db, "plant-api", embedding_model=API_MINILM)
    assert (created.embedding_model, created.embedding_dim) == (API_MINILM, 384)
    documents = [("pumps.md", samples.MARKDOWN), ("valves.html", samples.HTML), ("memo.txt", samples.TEXT.encode())]
    for name, data in documents:
        for collection in ("plant-local", "plant-api"):
            outcome = ingest_bytes(db, collection, name, data)
            assert outcome.status == "added", outcome.message

    assert server.requests, "the API collection must have been embedded through the server"
    assert {r["headers"].get("authorization") for r in server.requests} == {f"Bearer {KEY}"}
    assert all(r["body"]["model"] == MINILM and "dimensions" not in r["body"] for r in server.requests)

    questions = ["how often should the mechanical seal be replaced", "relief valve pressure", "cooling water"]
    for question in questions:
        for mode in ("vector", "hybrid"):
            local = search(db, question, collection="plant-local", k=5, mode=mode)
            remote = search(db, question, collection="plant-api", k=5, mode=mode)
            assert len(local) >= 3
            assert [(h.filename, h.ordinal) for h in remote] == [(h.filename, h.ordinal) for h in local]
            assert np.allclose([h.score for h in remote], [h.score for h in local], atol=1e-4)
            assert np.allclose([h.vector_similarity or 0 for h in remote], [h.vector_similarity or 0 for h in local],
                               atol=1e-4)

    assert KEY not in database_text(db)
    assert KEY not in caplog.text
    assert KEY not in repr(api_settings) and KEY not in str(api_settings.model_dump())


def test_requests_are_split_into_batches_and_ordered_by_index_through_a_loopback_server(api_settings, server):
    embedder, _ = api_embedder(api_settings, embedding_api_batch_size=3)
    texts = [f"Sentence number {i} about pumps, valves and seals." for i in range(7)]
    vectors = embedder.embed(texts)
    assert [len(r["body"]["input"]) for r in server.requests] == [3, 3, 1]
    assert [t for r in server.requests for t in r["body"]["input"]] == texts
    local = load_embedder(MINILM).embed(texts)
    assert np.allclose(vectors, local, atol=1e-5)  # the server answers in reverse: order came from `index`

    server.reset()
    (tokens, *others) = set(embedder.count_tokens(texts))
    assert not others  # the texts have the same length in tokens: two of them fill a request of 2 * tokens
    embedder, _ = api_embedder(api_settings, embedding_api_batch_size=64, embedding_api_max_batch_tokens=2 * tokens)
    embedder.embed(texts)
    assert [len(r["body"]["input"]) for r in server.requests] == [2, 2, 2, 1]


def test_rate_limit_is_retried_after_the_servers_retry_after_through_a_loopback_server(api_settings, server):
    embedder, waits = api_embedder(api_settings)
    server.failures = [(429, {"Retry-After": "2"}, {"error": {"message": "Rate limit reached"}}),
                       (503, {}, {"error": {"message": "overloaded"}})]
    vectors = embedder.embed(["The pump delivers 12 cubic metres per hour."])
    assert len(server.requests) == 3 and vectors.shape == (1, 384)
    assert waits == [2.0, 0.0]  # Retry-After honoured; then the doubling backoff (0 s in these settings)

    server.reset()
    embedder, waits = api_embedder(api_settings, embedding_api_max_retries=2, embedding_api_backoff_s=0.5)
    server.failures = [(500, {}, {"error": {"message": "boom"}})] * 3
    with pytest.raises(EmbeddingApiError, match="answered 500.*after 3 tries"):
        embedder.embed(["anything"])
    assert waits == [0.5, 1.0]


def test_a_wrong_dimension_is_a_clear_error_and_stores_nothing_through_a_loopback_server(db, api_settings, server, counts):
    create_collection(db, "shifted", embedding_model=API_MINILM)
    before, rows_before = counts(), database_text(db)
    server.dimension_shift = 1
    outcome = ingest_bytes(db, "shifted", "memo.txt", samples.TEXT.encode())
    assert outcome.status == "failed"
    assert f"{server.base}/v1/embeddings" in outcome.message and MINILM in outcome.message
    assert "383 dimensions" in outcome.message and "expected 384" in outcome.message
    assert counts() == before and database_text(db) == rows_before


def test_the_key_is_masked_in_errors_through_a_loopback_server(api_settings, server, caplog):
    caplog.set_level(logging.DEBUG)
    embedder, _ = api_embedder(api_settings)
    server.failures = [(401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}."}})]
    with pytest.raises(EmbeddingApiError) as refused:
        embedder.embed(["anything"])
    assert "answered 401" in str(refused.value) and "Check the key" in str(refused.value)
    assert KEY not in str(refused.value) and KEY not in caplog.text


def test_dimensions_are_sent_when_set_through_a_loopback_server(api_settings, server, capsys):
    reference = embedding_reference(API_MINILM, dimensions=128)
    assert reference == f"{API_MINILM}?dimensions=128"
    vectors = load_embedder(reference).embed(["Replace the mechanical seal every 8000 hours."])
    assert vectors.shape == (1, 128) and server.requests[-1]["body"]["dimensions"] == 128

    assert main(["collections", "create", "short-vectors", "--embedding-model", API_MINILM, "--dimensions", "96",
                 "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert (created["embedding_model"], created["embedding_dim"]) == (f"{API_MINILM}?dimensions=96", 96)
    assert main(["collections", "create", "local-short", "--embedding-model", MINILM, "--dimensions", "96"]) == 2
    assert "dimensions= is sent to embedding APIs only" in capsys.readouterr().err


def test_azure_wire_format_through_a_loopback_server(api_settings, server):
    embedder, _ = api_embedder(api_settings, "azure:minilm", embedding_api_base=server.base,
                               embedding_api_version="2024-10-21")
    assert embedder.dim == 384  # not known here: asked of the server once
    embedder.embed(["Azure puts the deployment in the URL."])
    request = server.requests[-1]
    assert request["path"] == "/openai/deployments/minilm/embeddings"
    assert request["query"] == {"api-version": ["2024-10-21"]}
    assert request["headers"].get("api-key") == KEY and "authorization" not in request["headers"]
    assert "model" not in request["body"]


def test_an_input_over_the_models_limit_is_refused_before_it_is_sent_through_a_loopback_server(api_settings, server):
    embedder, _ = api_embedder(api_settings, embedding_api_max_input_tokens={MINILM: 5})
    with pytest.raises(EmbeddingApiError, match=r"longer than .* takes \(5 tokens.*EXPERT_STUDIO_EMBEDDING_API_MAX_INPUT_TOKENS"):
        embedder.embed(["short", "this sentence is certainly longer than five tokens"])
    assert server.requests == []
    assert api_embedder(api_settings, "openai:text-embedding-3-small")[0].max_tokens == 8191
    assert api_embedder(api_settings)[0].max_tokens == load_embedder(MINILM).max_tokens  # the same model, here


def test_openai_needs_a_key_and_reads_streamlit_secrets(monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "EXPERT_STUDIO_EMBEDDING_API_KEY", "EXPERT_STUDIO_EMBEDDING_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None)
    embedder = ApiEmbedder("openai:text-embedding-3-small?dimensions=256", settings)
    with pytest.raises(EmbeddingApiError, match="needs an API key.*OPENAI_API_KEY"):  # refused before any request
        embedder.embed(["no key, no request"])
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(f'OPENAI_API_KEY = "{KEY}"\n')
    assert api_key(settings) == KEY
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    assert api_key(Settings(_env_file=None)) == "sk-from-the-environment"


def test_model_references():
    assert parse_reference("openai:text-embedding-3-small?dimensions=512").dimensions == 512
    assert parse_reference(MINILM).is_api is False
    assert str(parse_reference("AZURE:my-deployment")) == "azure:my-deployment"
    for bad, message in [
        ("openai:text-embedding-3-small?dimensions=4000", "between 1 and 2000"),
        ("openai:text-embedding-3-small?dimensions=1600", "at most 1536"),
        ("openai:text-embedding-ada-002?dimensions=512", "does not take the dimensions"),
        ("openai:text-embedding-3-small?trust_remote_code=true", "local models only"),
        ("openai:", "names no model"),
        (f"{MINILM}?colour=blue", "Unknown option colour"),
    ]:
        with pytest.raises(EmbeddingModelError, match=message):
            parse_reference(bad)
    with pytest.raises(EmbeddingApiError, match="at most 2000.*--dimensions"):
        _ = ApiEmbedder("openai:text-embedding-3-large", Settings(_env_file=None)).dim


def test_a_model_that_runs_repository_code_is_refused_without_the_opt_in(db, tmp_path, capsys):
    folder = tmp_path / "needs-remote-code"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "custom-bert", "auto_map": {"AutoConfig": "configuration.CustomConfig",
                                                   "AutoModel": "modeling.CustomModel"}}
    ))
    with pytest.raises(EmbeddingModelError, match=r"runs Python code from its repository \(config.json auto_map\).*"
                                                  r"--trust-remote-code"):
        load_embedder(str(folder))
    # With the opt-in the gate lets it through (this folder has no code or weights, so loading then fails).
    with pytest.raises(EmbeddingModelError) as loading:
        load_embedder(embedding_reference(str(folder), trust_remote_code=True))
    assert "runs Python code" not in str(loading.value) and "could not be loaded" in str(loading.value)

    assert main(["collections", "create", "remote-code", "--embedding-model", str(folder)]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main(["collections", "create", "trusted", "--embedding-model", MINILM, "--trust-remote-code"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert get_collection(db, "trusted").embedding_model == f"{MINILM}?trust_remote_code=true"


def test_documents_page_creates_an_api_collection_through_a_loopback_server(db, api_settings, server):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()  # the app's cached Database must follow this module's settings
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/documents.py").run()
    assert not at.exception
    at.text_input(key="new_collection_name").set_value("From the page")
    at.checkbox(key="new_collection_trust_remote_code").check()
    at.button(key="create_collection").click().run()
    assert "go with an embedding model" in at.error[0].value

    at.text_input(key="new_collection_name").set_value("From the page")
    at.text_input(key="new_collection_model").set_value(API_MINILM)
    at.number_input(key="new_collection_dimensions").set_value(64)
    at.button(key="create_collection").click().run()
    assert not at.exception and not at.error
    assert at.selectbox(key="selected_collection").value == "From the page"
    created = get_collection(db, "From the page")
    assert (created.embedding_model, created.embedding_dim) == (f"{API_MINILM}?dimensions=64", 64)
    assert server.requests == []  # the size was known from dimensions=: nothing sent to create it
