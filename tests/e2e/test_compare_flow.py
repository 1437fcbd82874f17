"""Compare page in a real browser: one question, four answers side by side; then a blind vote, recorded, and the
labels revealed.

The base model is a tiny random Llama written to a folder, with a LoRA adapter for it put straight into the app's
database (training one through the page is the Fine-tune flow's business): four answers take seconds on a CPU.
"""

from __future__ import annotations

import re
import uuid

import pytest
from e2e_harness import (
    alerts,
    choose_option,
    click_and_wait,
    create_collection,
    open_page,
    set_number,
    upload_files,
)
from playwright.sync_api import expect
from tiny_models import build_tiny_adapter, build_tiny_model

from core.config import Settings
from core.db import open_database
from core.evaluation.votes import list_votes
from core.models.adapters import import_adapter

pytestmark = pytest.mark.e2e

MEMO = "Boiler memo.\n\nThe relief valve of boiler B2 opens at 3.5 bar. Test it every quarter.\n"
QUESTION = "when does the relief valve of boiler B2 open"
OTHER_MODEL = "Other (Hugging Face id or folder)…"
COMPARE_MS = 180_000


@pytest.fixture
def app_db(app):
    settings = Settings(data_dir=app.data_dir, database_url=None)
    return open_database(settings), settings


def fill_and_commit(page, box, value: str, key: str = "Enter") -> None:
    def type_value() -> None:
        box.fill(value)
        box.press(key)

    click_and_wait(page, type_value)
    expect(box).to_have_value(value)


def open_expander(page, title: str) -> None:
    """Open an st.expander and wait until it has unfolded: a selectbox clicked while the expander still grows
    opens its list and loses it again."""
    expander = page.locator('[data-testid="stExpander"]').filter(has_text=title)
    expander.get_by_text(title).click()
    last = None
    for _ in range(50):
        box = expander.bounding_box()
        if box is not None and box == last:
            return
        last = box
        page.wait_for_timeout(150)


def column_headings(page) -> list[str]:
    columns = page.locator('[data-testid="stColumn"]').filter(has=page.locator('[data-testid="stText"]'))
    return [c.locator('[data-testid="stMarkdownContainer"]').first.inner_text().strip() for c in columns.all()]


def test_four_answers_side_by_side_then_a_blind_vote(page, app_url, app_db, tmp_path):
    db, settings = app_db
    suffix = uuid.uuid4().hex[:8]
    model = build_tiny_model(tmp_path / "tiny-llama", "llama")
    adapter = f"e2e-lora-{suffix}"
    import_adapter(db, build_tiny_adapter(model, tmp_path / adapter), adapter, settings)
    memo = tmp_path / f"boiler-memo-{suffix}.txt"
    memo.write_text(MEMO)
    collection = f"e2e-compare-{suffix}"

    open_page(page, app_url, "Documents")
    create_collection(page, collection)
    upload_files(page, [memo])
    click_and_wait(page, page.get_by_role("button", name="Add to collection"))
    expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_have_count(1)

    open_page(page, app_url, "Compare")
    expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
    choose_option(page, "Collection", collection)
    choose_option(page, "Adapter", adapter)
    open_expander(page, "Model and generation settings")
    choose_option(page, "Model", OTHER_MODEL)
    fill_and_commit(page, page.get_by_label("Model id or folder", exact=True), str(model))
    set_number(page, "Max new tokens", 6)
    fill_and_commit(page, page.get_by_label("Question", exact=True), QUESTION, key="Control+Enter")

    # Side by side: four answers, each with its timings; the two RAG answers with the memo as their source.
    click_and_wait(page, page.get_by_role("button", name="Compare", exact=True), COMPARE_MS)
    assert alerts(page, "error") == [], alerts(page)
    assert column_headings(page) == ["Base model", "Base + RAG", f"Fine-tuned ({adapter})", f"Fine-tuned + RAG ({adapter})"]
    timings = page.locator('[data-testid="stCaptionContainer"]').filter(has_text=re.compile(r"first token .* tokens"))
    expect(timings).to_have_count(4)
    expect(page.locator('[data-testid="stExpander"]').filter(has_text=f"[1] {memo.name}")).to_have_count(2)

    # Blind: A–D with nothing that gives a variant away, a vote with a note, then the labels revealed.
    click_and_wait(page, page.get_by_text("Blind mode", exact=True))  # the label: the switch itself sits under it
    expect(page.get_by_role("switch", name="Blind mode")).to_be_checked()
    click_and_wait(page, page.get_by_role("button", name="Compare", exact=True), COMPARE_MS)
    assert column_headings(page) == ["Answer A", "Answer B", "Answer C", "Answer D"]
    expect(timings).to_have_count(0)
    before = len(list_votes(db))
    form = page.locator('[data-testid="stForm"]')
    form.get_by_label("Note (optional)").fill("B is the clearest")
    form.locator('[data-testid="stRadio"]').get_by_text("B", exact=True).click()  # (the note loses the focus first)
    expect(form.get_by_role("radio", name="B", exact=True)).to_be_checked()
    click_and_wait(page, form.get_by_role("button", name="Submit vote"))
    expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_have_count(1)
    success = alerts(page, "success")
    assert len(success) == 1 and success[0].startswith("Vote recorded: B ("), alerts(page)
    assert all(f"{label} was " in success[0] for label in "ABCD")
    headings = column_headings(page)
    assert [h.split(":")[0] for h in headings] == ["Answer A", "Answer B", "Answer C", "Answer D"]
    assert all(": " in h for h in headings)  # each label now names its variant
    expect(timings).to_have_count(4)

    (vote, *_) = list_votes(db)
    assert len(list_votes(db)) == before + 1
    assert vote.note == "B is the clearest" and vote.adapter == adapter and vote.question == QUESTION
    revealed_b = headings[1].split(": ", 1)[1]
    assert revealed_b.startswith({"base": "Base model", "rag": "Base + RAG", "ft": "Fine-tuned (",
                                  "rag+ft": "Fine-tuned + RAG"}[vote.choice])
    expect(page.get_by_text("The order is not yet decided", exact=False)).to_be_visible()
