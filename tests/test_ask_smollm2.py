"""The real bundled SmolLM2-135M-Instruct answers from documents in the real database, through
core, the CLI and the Ask page. Converting its GGUF happens once per test session."""

import json

import pytest
import samples
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.answers.rag import ask
from core.cli import main
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.models import BUNDLED_MODEL, load_model

QUESTION = "At what pressure does the relief valve of boiler B2 open?"


@pytest.fixture(scope="module")
def plant(db):
    create_collection(db, "plant")
    for name, data in [("pumps.md", samples.MARKDOWN), ("memo.txt", samples.TEXT.encode()), ("valves.html", samples.HTML)]:
        assert ingest_bytes(db, "plant", name, data).ok
    return "plant"


@pytest.fixture(scope="module")
def smollm2(settings):
    return load_model(BUNDLED_MODEL)


def test_bundled_model_loads_offline_on_the_machines_device(smollm2):
    from core.models.device import choose_device

    assert (smollm2.device, smollm2.dtype) == choose_device()  # CPU float32 here, CUDA bf16/fp16 on a GPU
    assert smollm2.path.name == "SmolLM2-135M-Instruct" and (smollm2.path / "model.safetensors").is_file()
    assert 400 * 2**20 < smollm2.memory_bytes < 700 * 2**20
    assert smollm2.context_window == 8192


def test_answers_a_rag_question_from_the_expected_passage(db, plant, smollm2):
    answer = ask(db, QUESTION, collection=plant, max_new_tokens=48)
    assert answer.sources[0].filename == "memo.txt" and "3.5 bar" in answer.sources[0].text
    text = "".join(answer.stream())
    assert text.strip() and "<|im_end|>" not in text
    assert answer.timings.new_tokens > 0 and answer.timings.tokens_per_second > 0


def test_cli_ask_json(plant, smollm2, capsys):
    assert main(["ask", QUESTION, "--collection", plant, "--max-new-tokens", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sources"][0]["filename"] == "memo.txt"
    assert result["answer"] and result["model"] == BUNDLED_MODEL and result["adapter"] == "none"
    assert result["timings"]["context_tokens"] > 50


def test_ask_page_streams_an_answer_with_its_sources(plant, smollm2):
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=300)
    at.run()
    at.switch_page("pages/ask.py").run()
    assert not at.exception
    at.selectbox(key="ask_collection").select(plant)
    at.number_input(key="ask_max_new_tokens").set_value(32)
    at.run()
    at.chat_input(key="ask_question").set_value(QUESTION).run()
    assert not at.exception
    assert [e.value for e in at.error] == []
    labels = [e.label for e in at.expander]
    assert any("[1] memo.txt" in label for label in labels)
    captions = " ".join(c.value for c in at.caption)
    assert "tokens/s" in captions and "tokens of context" in captions
    assert at.session_state["ask_history"][0][1].text


def test_ask_page_explains_an_empty_collection(db, smollm2):
    create_collection(db, "nothing-yet")
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=300)
    at.run()
    at.switch_page("pages/ask.py").run()
    at.selectbox(key="ask_collection").select("nothing-yet")
    at.run()
    at.chat_input(key="ask_question").set_value("Anything?").run()
    assert not at.exception
    assert "'nothing-yet' has no documents yet" in at.error[0].value
