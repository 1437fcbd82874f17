"""Ask page in a real browser: upload a memo, ask about it, watch the answer stream in with its source and timings."""

from __future__ import annotations

import uuid

import pytest
from e2e_harness import (
    alerts,
    ask_question,
    assistant_message,
    choose_option,
    click_and_wait,
    create_collection,
    open_page,
    selectbox,
    set_number,
    upload_files,
)
from playwright.sync_api import expect

from core.models.device import choose_device

pytestmark = pytest.mark.e2e

MEMO = """\
Memo: boiler house, findings from the yearly inspection

The relief valve of boiler B2 opens at 3.5 bar. It was tested in March and lifted at the set point;
test it again every quarter and record the result in the boiler log.

The feed water pump of boiler B1 was noisy at start-up: its coupling was realigned.
"""
QUESTION = "At what pressure does the relief valve of boiler B2 open?"
# The first visit to the Ask page loads the bundled model, converting its GGUF once per data dir: 1-2 minutes here.
MODEL_LOAD_MS = 300_000
ANSWER_MS = 120_000


def test_ask_streams_an_answer_with_its_source_and_timings(page, app_url, tmp_path):
    memo = tmp_path / f"boiler-memo-{uuid.uuid4().hex[:6]}.txt"
    memo.write_text(MEMO)
    collection = f"e2e-ask-{uuid.uuid4().hex[:8]}"

    open_page(page, app_url, "Documents")
    create_collection(page, collection)
    upload_files(page, [memo])
    click_and_wait(page, page.get_by_role("button", name="Add to collection"))
    expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_have_count(1)
    assert alerts(page, "success")[0].startswith(f"{memo.name}: added"), alerts(page)

    open_page(page, app_url, "Ask", timeout_ms=MODEL_LOAD_MS)
    expect(page.get_by_role("heading", name="Ask", exact=True)).to_be_visible()
    assert alerts(page, "error") == []
    device, _ = choose_device()  # the app runs on this machine: the cpu here, cuda on a GPU machine
    expect(page.get_by_text(f"Model: HuggingFaceTB/SmolLM2-135M-Instruct on {device}")).to_be_visible()
    choose_option(page, "Collection", collection)
    expect(page.get_by_role("switch", name="RAG")).to_be_checked()
    page.get_by_text("Model and generation settings").click()
    set_number(page, "Max new tokens", 32)  # a short answer keeps the test quick on a CPU

    snapshots = ask_question(page, QUESTION, timeout_ms=ANSWER_MS)
    assert alerts(page, "error") == [], alerts(page)
    expect(page.get_by_role("group", name="Chat message from user")).to_have_text(QUESTION)
    answer = assistant_message(page)

    # Streamed: while the script still ran, before the timings caption (written once the stream ends) appeared,
    # the answer column already showed text, and some of it was only part of the final answer. (The model yields
    # a piece per word or so at a few tokens/s here; a run sees ~10 partial states.)
    final_text = snapshots[-1]["text"] if snapshots else ""
    assert final_text, snapshots
    streaming = [s for s in snapshots if s["running"] and s["text"] and "tokens/s" not in s["caption"]]
    assert streaming, f"no answer text was seen before the run finished: {snapshots}"
    partial = {s["text"] for s in streaming} - {final_text}
    assert partial, f"the answer appeared all at once, not streamed: {snapshots}"
    print(f"\nanswer seen in {len(partial)} partial states before {final_text!r}")

    # Sources beside the answer: the memo is source [1].
    expect(answer.get_by_text("Sources (cited ones marked ★)")).to_be_visible()
    source = answer.locator('[data-testid="stExpander"]').filter(has_text=f"[1] {memo.name}")
    expect(source.locator("summary")).to_be_visible()
    # The answer's timings under it.
    caption = answer.locator('[data-testid="stCaptionContainer"]').filter(has_text="tokens/s")
    expect(caption).to_be_visible()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct · adapter: none" in caption.inner_text()
    assert "tokens of context" in caption.inner_text()

    # The source opens to the passage the answer was built from.
    source.locator("summary").click()
    expect(source.locator('[data-testid="stText"]')).to_contain_text("The relief valve of boiler B2 opens at 3.5 bar.")
    expect(selectbox(page, "Collection")).to_have_value(collection)
