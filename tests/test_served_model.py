"""Answers from an OpenAI-compatible chat endpoint (`openai:<served name>`), against a loopback server.

No real server installs here in reasonable time (llama-cpp-python has no binary wheel for this platform;
vLLM and Ollama are not pip-installable servers for a CPU), so the server is a fake that stands in for
one: http.server in a thread speaking the documented wire format (`POST /v1/chat/completions` with
`stream: true` answered by `data: {chunk}` server-sent events, a usage chunk, `data: [DONE]`; `GET
/v1/models`). It answers with fixed text, or with the tiny local model generating for real. Everything
on our side (retrieval, prompts, the HTTP client, the SSE parser, errors) is the real code.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import samples
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core.answers.rag import RAG_PROMPTS, ask, fit_sources
from core.cli import main
from core.config import get_settings
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.documents.search import SearchHit
from core.evaluation.compare import compare, generation_settings
from core.evaluation.votes import record_vote
from core.models.served import (
    ServedModelError,
    WordLoopGuard,
    estimate_tokens,
    served_choices,
    served_model,
    stream_served_chat,
)

SECRET = "sk-test-5ecret-never-shown-0042"
QUESTION = "At what pressure does the relief valve of boiler B2 open?"
ANSWER = "The relief valve of boiler B2 opens at 3.5 bar [1]."


class Script:
    """What the loopback server does with the next requests, and what it was sent."""

    def __init__(self):
        self.text = ANSWER
        self.usage: dict | None = {"prompt_tokens": 321, "completion_tokens": 13, "total_tokens": 334}
        self.finish_reason = "stop"
        self.models = ["tiny", "tiny-adapter"]
        self.required_key: str | None = None
        self.status: tuple[int, dict, dict] | None = None  # forced (status, headers, json body)
        self.echo_authorization = False  # a careless server that quotes the request's header in its error
        self.refuse_stream_options = False
        self.json_reply = False  # a server that ignores stream: true
        self.raw_lines: list[str] | None = None  # send these SSE lines as they are
        self.generate = None  # body -> (pieces, usage): the tiny model behind the server
        self.requests: list[tuple[str, dict, dict | None]] = []  # (path, headers, body)

    @property
    def bodies(self) -> list[dict]:
        return [body for path, _, body in self.requests if path.endswith("/chat/completions")]


class Handler(BaseHTTPRequestHandler):
    script: Script  # set on the server's subclass

    def log_message(self, *args):  # quiet
        pass

    def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _refused(self) -> bool:
        script = self.server.script
        if script.required_key and self.headers.get("Authorization") != f"Bearer {script.required_key}":
            said = f" (got {self.headers.get('Authorization')})" if script.echo_authorization else ""
            self._json(401, {"error": {"message": f"Incorrect API key provided{said}", "code": "invalid_api_key"}})
            return True
        return False

    def do_GET(self):
        self.server.script.requests.append((self.path, dict(self.headers), None))
        if self._refused():
            return
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.script.models]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        script = self.server.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        script.requests.append((self.path, dict(self.headers), body))
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if self._refused():
            return
        if script.status is not None:
            status, headers, data = script.status
            return self._json(status, data, headers)
        if script.refuse_stream_options and "stream_options" in body:
            return self._json(400, {"error": {"message": "Unrecognized request argument supplied: stream_options"}})
        if body["model"] not in script.models:
            return self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist.", "code": 404}})
        if script.generate is not None:
            pieces, usage = script.generate(body)
        else:
            pieces, usage = re.findall(r"\S+\s*", script.text), script.usage
        if script.json_reply:
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": script.finish_reason}
            return self._json(200, {"object": "chat.completion", "model": body["model"], "usage": usage, "choices": [choice]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes

        def chunk(delta: dict, finish=None, **extra) -> None:
            event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            send(f"data: {json.dumps(event)}")

        def send(line: str) -> None:
            self.wfile.write(f"{line}\n\n".encode())
            self.wfile.flush()

        try:
            if script.raw_lines is not None:
                for line in script.raw_lines:
                    send(line)
                return
            send(": keep-alive")
            chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                chunk({"content": piece})
            chunk({}, script.finish_reason)
            if usage and (body.get("stream_options") or {}).get("include_usage"):
                send(f"data: {json.dumps({'id': 'chatcmpl-1', 'choices': [], 'usage': usage})}")
            send("data: [DONE]")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a loop was cut)
            pass


@pytest.fixture(scope="module")
def server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.script = Script()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def script(server) -> Script:
    server.script = Script()
    return server.script


@pytest.fixture(autouse=True)
def no_key_from_outside(monkeypatch):
    for variable in ("EXPERT_STUDIO_CHAT_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def served(settings, server):
    """The module's settings with the loopback server as the chat endpoint."""
    return settings.model_copy(update={"chat_api_base": f"http://127.0.0.1:{server.server_port}/v1/", "chat_api_model": "tiny"})


@pytest.fixture
def served_env(settings, server, monkeypatch):
    """The same through the environment, for the command line and the pages (they read get_settings())."""
    monkeypatch.setenv("EXPERT_STUDIO_CHAT_API_BASE", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("EXPERT_STUDIO_CHAT_API_MODEL", "tiny")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def plant(db):
    create_collection(db, "plant")
    ingest_bytes(db, "plant", "pumps.md", samples.MARKDOWN)
    ingest_bytes(db, "plant", "memo.txt", samples.TEXT.encode())
    return "plant"


def test_loopback_rag_answer_streams_cites_and_records_usage(db, plant, script, served):
    answer = ask(db, QUESTION, collection=plant, model_id="openai:tiny", max_new_tokens=48, settings=served)
    assert answer.model == "openai:tiny" and answer.sources[0].filename == "memo.txt"
    estimated_context = answer.timings.context_tokens
    assert script.bodies == []  # generation starts when the answer is streamed

    pieces = list(answer.stream())
    assert len(pieces) > 5 and "".join(pieces) == ANSWER
    assert answer.text == ANSWER and answer.cited == [1]
    t = answer.timings
    assert t.time_to_first_token is not None and t.time_to_first_token >= t.retrieval_seconds > 0
    assert t.total_seconds >= t.time_to_first_token
    assert (t.context_tokens, t.new_tokens, t.tokens_estimated) == (321, 13, False)  # the server's usage

    (body,) = script.bodies
    assert body["model"] == "tiny" and body["max_tokens"] == 48 and body["temperature"] == 0.0
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    system, user = body["messages"]
    assert system == {"role": "system", "content": RAG_PROMPTS[served.rag_prompt]}
    assert "[1] memo.txt (text)\nBoiler memo." in user["content"] and "3.5 bar" in user["content"]
    assert user["content"].endswith(f"Question: {QUESTION}")
    assert estimated_context >= math.ceil(sum(len(m["content"]) for m in body["messages"]) / 3)  # conservative
    assert answer.to_dict()["timings"]["tokens_estimated"] is False


def test_wire_format_without_usage_counts_are_estimated_and_marked(db, plant, script, served):
    script.usage = None
    answer = ask(db, QUESTION, collection=plant, model_id="openai:tiny", settings=served).complete()
    assert answer.text == ANSWER and answer.timings.tokens_estimated
    assert answer.timings.new_tokens == estimate_tokens(ANSWER)

    script.finish_reason = "length"
    generation = stream_served_chat(served_model("openai:tiny", served), [{"role": "user", "content": "hi"}], max_new_tokens=5)
    assert "".join(generation) == ANSWER
    assert generation.stats.stopped_by == "max new tokens" and generation.stats.tokens_estimated
    script.finish_reason, script.usage = "stop", {"prompt_tokens": 9, "completion_tokens": 13}
    generation = stream_served_chat(served_model("openai:tiny", served), [{"role": "user", "content": "hi"}])
    list(generation)
    assert (generation.stats.stopped_by, generation.stats.prompt_tokens, generation.stats.new_tokens) == ("end of turn", 9, 13)


def test_loopback_loop_is_cut_at_its_first_copy_and_the_connection_closed(script, served):
    script.text = "Answer: " + "the pump " * 40 + "end."
    generation = stream_served_chat(served_model("openai:tiny", served), [{"role": "user", "content": "hi"}])
    pieces = list(generation)
    assert generation.stats.stopped_by == "loop" and generation.text.strip() == "Answer: the pump"
    assert len(pieces) < 40  # stopped reading well before the end
    assert generation.stats.tokens_estimated  # the usage chunk never came


def test_word_loop_guard_judges_whole_words_only():
    guard = WordLoopGuard()
    assert all(guard.add(p) is None for p in ["Seals ", "last ", "2,000 ", "hours. ", "Check ", "bear", "ings."])
    text = "x " + "a b c d " * 4
    cuts = [WordLoopGuard().add(text)]
    assert cuts == [len("x a b c d ")]


def test_fine_tuned_variants_ask_for_the_adapters_served_name(db, plant, script, served):
    answers = compare(db, QUESTION, collection=plant, adapter="tiny-adapter", model_id="openai:tiny",
                      variants=["base", "rag", "ft", "rag+ft"], max_new_tokens=32, settings=served)
    for answer in answers:
        assert answer.answer.complete().text == ANSWER
    assert [b["model"] for b in script.bodies] == ["tiny", "tiny", "tiny-adapter", "tiny-adapter"]
    assert [len(b["messages"]) for b in script.bodies] == [1, 2, 1, 2]  # RAG: system + passages
    assert [a.answer.adapter for a in answers] == ["none", "none", "tiny-adapter", "tiny-adapter"]
    assert answers[1].sources[0].filename == "memo.txt" and answers[1].answer.cited == [1]


def test_loopback_errors_say_what_to_do(db, plant, script, served, monkeypatch):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = served.model_copy(update={"chat_api_base": f"http://127.0.0.1:{closed_port}/v1"})
    with pytest.raises(ServedModelError, match=rf"Cannot reach the chat endpoint http://127.0.0.1:{closed_port}/v1"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=down).complete()

    with pytest.raises(ServedModelError, match=r"serves no model named 'ghost'; it serves: tiny, tiny-adapter"):
        ask(None, "hello", use_rag=False, model_id="openai:ghost", settings=served).complete()
    with pytest.raises(ServedModelError, match=r"serves no model named 'old-adapter'.*--lora-modules old-adapter="):
        ask(db, "hello", use_rag=False, model_id="openai:tiny", adapter="old-adapter", settings=served).complete()

    script.required_key = "the-right-key"
    with pytest.raises(ServedModelError, match=r"wants an API key \(401\): set EXPERT_STUDIO_CHAT_API_KEY"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    script.echo_authorization = True
    with pytest.raises(ServedModelError, match=r"refused the API key \(401") as refused:
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    assert "Incorrect API key provided" in str(refused.value) and SECRET not in str(refused.value)
    assert script.requests[-1][1]["Authorization"] == f"Bearer {SECRET}"  # it was sent, only never shown

    script.required_key, script.status = None, (429, {"Retry-After": "7"}, {"error": {"message": "slow down"}})
    with pytest.raises(ServedModelError, match=r"limiting requests \(429, retry after 7 s\)"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    script.status = (400, {}, {"error": {"message": "This model's maximum context length is 2048 tokens."}})
    with pytest.raises(ServedModelError, match=r"EXPERT_STUDIO_CHAT_API_CONTEXT_WINDOW"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    script.status, script.raw_lines = None, ["data: <html>not json</html>"]
    with pytest.raises(ServedModelError, match=r"does not speak the OpenAI chat format"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    script.raw_lines = ['data: {"error": {"message": "out of memory"}}']
    with pytest.raises(ServedModelError, match=r"stopped with an error: out of memory"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()


def test_served_model_needs_an_endpoint_and_a_name(settings):
    with pytest.raises(ServedModelError, match=r"openai:tiny is answered by .* set EXPERT_STUDIO_CHAT_API_BASE"):
        ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=settings)
    with pytest.raises(ServedModelError, match=r"Name the served model"):
        served_model("openai: ", settings.model_copy(update={"chat_api_base": "http://127.0.0.1:1/v1"}))
    with pytest.raises(ServedModelError, match=r"http:// or https://"):
        served_model("openai:x", settings.model_copy(update={"chat_api_base": "127.0.0.1:8080/v1"}))
    with_password = settings.model_copy(update={"chat_api_base": "http://user:hunter2@127.0.0.1:8080/v1",
                                                "chat_api_model": "phi3"})
    assert served_choices(with_password) == {"openai:phi3": "phi3 (served at http://127.0.0.1:8080/v1)"}
    assert "hunter2" not in served_model("openai:phi3", with_password).description
    assert served_choices(settings) == {}


def test_loopback_server_refusing_stream_options_or_streaming_still_answers(script, served):
    script.refuse_stream_options = True
    answer = ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    assert answer.text == ANSWER and answer.timings.tokens_estimated  # no usage without stream_options
    assert ["stream_options" in b for b in script.bodies] == [True, False]

    script.refuse_stream_options, script.json_reply = False, True
    answer = ask(None, "hello", use_rag=False, model_id="openai:tiny", settings=served).complete()
    assert answer.text == ANSWER and (answer.timings.context_tokens, answer.timings.new_tokens) == (321, 13)


def test_passages_fit_the_served_window_estimated_as_characters_over_three(served):
    small = served.model_copy(update={"chat_api_context_window": 300})
    model = served_model("openai:tiny", small)
    assert model.tokens_estimated and model.context_window == 300
    hit = SearchHit(1, 1, "long.pdf", 1, None, "pressure " * 2000, 0, 0, 18000, 1.0, 0.5, None, 1, None)
    prompt = fit_sources(model, "what is the pressure ?", [hit], max_new_tokens=64)
    (source,) = prompt.sources
    assert source.text.startswith("pressure pressure") and source.text.endswith(" …")
    assert prompt.prompt_tokens <= 300 - 64
    assert sum(len(m["content"]) for m in prompt.messages) / 3 <= prompt.prompt_tokens


def test_tiny_model_behind_the_loopback_server_answers_as_it_does_locally(script, served, tiny_llama):
    """The server runs the tiny model for real; the prompt is counted with its local tokenizer."""
    from core.models import load_model, stream_chat

    local_model = load_model(tiny_llama)

    def generate(body):
        generation = stream_chat(local_model, body["messages"], max_new_tokens=body["max_tokens"],
                                 temperature=body["temperature"], top_p=body["top_p"])
        pieces = list(generation)
        return pieces, {"prompt_tokens": generation.stats.prompt_tokens, "completion_tokens": generation.stats.new_tokens}

    script.generate = generate
    matching = served.model_copy(update={"chat_api_tokenizer": tiny_llama})
    served_answer = ask(None, "hello there", use_rag=False, model_id="openai:tiny", max_new_tokens=8, settings=matching)
    local_answer = ask(None, "hello there", use_rag=False, model_id=tiny_llama, max_new_tokens=8).complete()
    assert served_answer.timings.context_tokens == local_answer.timings.context_tokens  # counted before sending
    served_answer.complete()
    assert served_answer.text == local_answer.text
    assert (served_answer.timings.context_tokens, served_answer.timings.new_tokens) == (
        local_answer.timings.context_tokens, local_answer.timings.new_tokens) and not served_answer.timings.tokens_estimated
    assert served_model("openai:tiny", matching).description.endswith("(tokens counted locally)")


def test_api_key_never_reaches_answers_the_database_or_the_command_line(db, plant, script, served, served_env,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("EXPERT_STUDIO_CHAT_API_KEY", SECRET)
    script.required_key = SECRET
    answers = compare(db, QUESTION, collection=plant, adapter="tiny-adapter", model_id="openai:tiny", settings=served)
    for answer in answers:
        answer.answer.complete()
    shown = json.dumps([a.to_dict() for a in answers])
    assert ANSWER in shown and SECRET not in shown
    record_vote(db, question=QUESTION, collection=plant, model="openai:tiny", adapter="tiny-adapter",
                settings=generation_settings(served), answers={a.variant: a.text for a in answers},
                shown_order=[a.variant for a in answers], choice="rag", note=None)
    assert main(["ask", QUESTION, "--collection", plant, "--model", "openai:tiny", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["answer"] == ANSWER and SECRET not in out + err
    assert main(["compare", QUESTION, "--collection", plant, "--model", "openai:ghost"]) == 2
    out, err = capsys.readouterr()
    assert "serves no model named 'ghost'" in err and SECRET not in out + err
    with db.engine.connect() as connection:
        tables = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        rows = [row for table in tables for row in connection.execute(text(f'SELECT t::text FROM "{table}" t')).scalars()]
    assert any("openai:tiny" in row for row in rows)  # the vote is there, under the served model's name
    assert not any(SECRET in row for row in rows)


def test_ask_and_compare_pages_offer_and_use_the_served_model(db, plant, script, served_env, monkeypatch):
    monkeypatch.setenv("EXPERT_STUDIO_CHAT_API_KEY", SECRET)
    monkeypatch.setenv("EXPERT_STUDIO_LANGUAGE_MODEL", "openai:tiny")  # the default: no local model loads at all
    get_settings.cache_clear()
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/ask.py").run()
    assert not at.exception
    model = at.selectbox(key="ask_model")
    assert model.value == "openai:tiny" and f"tiny (served at {served_env.chat_api_base})" in model.options
    at.selectbox(key="ask_collection").select(plant).run()
    assert any("tiny served at" in c.value and "tokens estimated" in c.value for c in at.caption)
    at.chat_input(key="ask_question").set_value(QUESTION).run()
    assert not at.exception and [e.value for e in at.error] == []
    assert at.session_state["ask_history"][0][1].text == ANSWER
    assert any("[1] memo.txt" in e.label for e in at.expander)
    assert script.bodies[-1]["model"] == "tiny"

    script.models = ["other"]  # the endpoint fails mid-answer: one clear message, no traceback
    at.chat_input(key="ask_question").set_value(QUESTION).run()
    assert not at.exception
    assert "serves no model named 'tiny'; it serves: other" in at.error[0].value

    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert f"tiny (served at {served_env.chat_api_base})" in at.selectbox(key="compare_model").options
    page_text = " ".join(str(e.value) for e in [*at.caption, *at.markdown, *at.error] if hasattr(e, "value"))
    assert SECRET not in page_text
