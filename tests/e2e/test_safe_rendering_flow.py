"""Hostile documents and answers in a real browser: a Markdown image or an HTML <img> in a document, an exam
file or a model's answer shows as text, and the browser fetches nothing.

A tiny HTTP server on 127.0.0.1 records every request. A document carries images and <img> tags pointing at it
(in its heading, which the pages show in captions and labels, and in its text); an exam file names it in a field;
and the answers come from a real (tiny) model whose every next-token score ties, so greedy decoding writes its
token 0, which the test sets to a hostile answer. The Documents, Exams, Compare and Ask pages show them all;
after each, the page loads one image on purpose (a canary, proving the browser can reach the server) and the
server must have seen the canaries only.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from e2e_harness import (
    alerts,
    ask_question,
    assistant_message,
    choose_option,
    click_and_wait,
    create_collection,
    fill_and_commit,
    open_expander,
    open_page,
    open_tab,
    search_results,
    set_number,
    upload_files,
)
from playwright.sync_api import expect
from tiny_models import CHATML, SPECIAL

pytestmark = pytest.mark.e2e

OTHER_MODEL = "Other (Hugging Face id or folder)…"
QUESTION = "At what pressure does the relief valve of boiler B2 open?"
MODEL_LOAD_MS = 300_000  # the Ask page loads the bundled model first (converted once per data dir)
ANSWER_MS = 180_000


class LeakServer:
    """Records the path of every request it gets; answers 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        seen = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                seen.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def assert_no_leaks(self, page, stage: str) -> None:
        """Have the page load one image from here on purpose (proving it can reach this server, and letting any
        image it started loading before arrive first), then: no request but those."""
        canary = f"/canary-{stage}"
        page.evaluate("url => { new Image().src = url; }", self.base + canary)
        deadline = time.monotonic() + 20
        while canary not in self.paths and time.monotonic() < deadline:
            time.sleep(0.1)
        assert canary in self.paths, f"the browser never reached the server: {self.paths}"
        leaks = [path for path in self.paths if not path.startswith("/canary-")]
        assert leaks == [], f"{stage}: the browser fetched {leaks}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def leak_server():
    server = LeakServer()
    yield server
    server.close()


def hostile_document(base: str) -> str:
    return f"""\
# Boiler notes ![heading]({base}/leak-heading) <img src="{base}/leak-heading-html">

Memo from the yearly inspection of the boiler house. The relief valve of boiler B2 opens at 3.5 bar.
It was tested in March and lifted at the set point; test it again every quarter.
![diagram]({base}/leak-doc) <img src="{base}/leak-doc-html"> <IMG SRC={base}/leak-doc-upper>

![logo][ref]

[ref]: {base}/leak-doc-ref
"""


def hostile_answer(base: str) -> str:
    return (f"**Answer:** the valve opens at 3.5 bar [1]. ![x]({base}/leak-answer) "
            f'<img src="{base}/leak-answer-html"> ![y][r]\n\n[r]: {base}/leak-answer-ref\n')


def build_fixed_answer_model(folder: Path, answer: str) -> Path:
    """A tiny Llama with a zeroed output layer: every next-token score is 0, so greedy decoding picks token 0,
    which is `answer` (one token of the word-level vocabulary). A real model, loaded by the app like any other."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([answer, *SPECIAL, "assistant", "user", "system"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:], model_max_length=512,
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hostile_documents_and_answers_load_nothing(page, app, app_url, leak_server, tmp_path):
    base = leak_server.base
    suffix = uuid.uuid4().hex[:8]
    collection = f"e2e-hostile-{suffix}"
    document = tmp_path / f"boiler-notes-{suffix}.md"
    document.write_text(hostile_document(base))
    heading = f'Boiler notes ![heading]({base}/leak-heading) <img src="{base}/leak-heading-html">'
    answer = hostile_answer(base)
    # The app loads model folders from under its models folder only.
    model = build_fixed_answer_model(app.data_dir / "models" / f"fixed-answer-llama-{suffix}", answer)

    # Documents: the heading is shown in the chunk captions and the search results, as written.
    open_page(page, app_url, "Documents")
    create_collection(page, collection)
    upload_files(page, [document])
    click_and_wait(page, page.get_by_role("button", name="Add to collection"))
    expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_have_count(1)
    open_tab(page, "Library")
    chunks = open_expander(page, f"Chunks of {document.name}")
    chunks.locator('[data-testid="stText"]').first.scroll_into_view_if_needed()
    leak_server.assert_no_leaks(page, "library")
    expect(chunks.locator('[data-testid="stCaptionContainer"]').first).to_contain_text(heading)
    expect(chunks.locator('[data-testid="stText"]').first).to_contain_text(f"![diagram]({base}/leak-doc)")
    search = open_tab(page, "Search")
    search.get_by_label("Search the collection").fill("relief valve of boiler B2")
    click_and_wait(page, search.get_by_role("button", name="Search", exact=True))
    leak_server.assert_no_leaks(page, "search")
    results = search_results(page)
    assert results and results[0]["title"] == f"[1] {document.name} · § {heading}", results

    # Exams: a file's field names and rows are shown in the preview's notes and problems, as written.
    open_page(page, app_url, "Exams")
    exam = tmp_path / f"hostile-exam-{suffix}.jsonl"
    exam.write_text(json.dumps({"question": QUESTION, "reference_answer": f"3.5 bar ![r]({base}/leak-exam-answer)",
                                "source_document": f"![d]({base}/leak-exam-doc)",
                                f"![f]({base}/leak-exam-field)": "x"}) + "\n")
    choose_option(page, "Collection the exam asks about", collection)
    upload_files(page, [exam])
    page.get_by_text("Rows that will not be saved").wait_for()
    leak_server.assert_no_leaks(page, "exam-preview")
    expect(page.locator('[data-testid="stAlertContentInfo"]')).to_contain_text(f"'![f]({base}/leak-exam-field)'")
    expect(page.locator('[data-testid="stAlertContentWarning"]')).to_contain_text(f"![d]({base}/leak-exam-doc)")

    # Compare: the answers as plain text, the passages under their heading as written.
    open_page(page, app_url, "Compare")
    choose_option(page, "Collection", collection)
    open_expander(page, "Model and generation settings")
    choose_option(page, "Model", OTHER_MODEL)
    fill_and_commit(page, page.get_by_label("Model id or folder", exact=True), str(model))
    set_number(page, "Max new tokens", 1)
    fill_and_commit(page, page.get_by_label("Question", exact=True), QUESTION, key="Control+Enter")
    click_and_wait(page, page.get_by_role("button", name="Compare", exact=True), ANSWER_MS)
    source = page.locator('[data-testid="stExpander"]').filter(has_text=f"[1] {document.name}")
    source.scroll_into_view_if_needed()
    leak_server.assert_no_leaks(page, "compare")
    assert alerts(page, "error") == [], alerts(page)
    columns = page.locator('[data-testid="stColumn"]').filter(has=page.locator('[data-testid="stText"]'))
    expect(columns).to_have_count(2)  # base and base + RAG
    for column in columns.all():
        assert column.locator('[data-testid="stText"]').first.inner_text().strip() == answer.strip()
    expect(source.locator("summary")).to_contain_text(heading)

    # Ask: the answer is Markdown (its bold and its citation link work) whose images and HTML show as text.
    open_page(page, app_url, "Ask", timeout_ms=MODEL_LOAD_MS)
    choose_option(page, "Collection", collection)
    open_expander(page, "Model and generation settings")
    choose_option(page, "Model", OTHER_MODEL)
    fill_and_commit(page, page.get_by_label("Model id or folder", exact=True), str(model))
    set_number(page, "Max new tokens", 1)
    ask_question(page, QUESTION, timeout_ms=ANSWER_MS)
    assert alerts(page, "error") == [], alerts(page)
    reply = assistant_message(page)
    shown = reply.locator('[data-testid="stColumn"]').first.locator('[data-testid="stMarkdownContainer"]').first
    shown.scroll_into_view_if_needed()
    leak_server.assert_no_leaks(page, "ask")
    expect(shown).to_contain_text(f"Answer: the valve opens at 3.5 bar [1]. [image: x] ({base}/leak-answer) "
                                  f'<img src="{base}/leak-answer-html"> [image: y] ({base}/leak-answer-ref)')
    expect(shown.locator("strong")).to_have_text("Answer:")
    expect(shown.get_by_role("link", name="[1]")).to_have_attribute("href", "#source-0-1")
    cited = reply.locator('[data-testid="stExpander"]').filter(has_text=f"[1] {document.name}")
    expect(cited.locator("summary")).to_contain_text(f"★ [1] {document.name} · {heading}")
    expect(cited.locator('[data-testid="stText"]')).to_contain_text(f"<img src=\"{base}/leak-doc-html\">")
    assert page.locator('img[src*="/leak"]').count() == 0
    leak_server.assert_no_leaks(page, "end")
