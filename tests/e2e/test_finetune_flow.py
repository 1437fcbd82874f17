"""Fine-tune page in a real browser: start a LoRA job on a tiny model, watch it live, find the adapter.

The training set goes straight into the app's database (importing through the Training data page would measure it
with the bundled model's tokenizer, which converts the bundled GGUF first: minutes). The base model is a tiny random
Llama written to a folder; the page starts its own worker process, which trains the "quick CPU check" preset.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest
from e2e_harness import (
    alerts,
    choose_option,
    click_and_wait,
    open_page,
    open_tab,
    read_dataframe,
    selectbox,
    selectbox_options,
)
from playwright.sync_api import expect
from sqlalchemy import text
from tiny_models import build_tiny_model
from training_helpers import make_dataset

from core.config import Settings
from core.db import open_database
from core.models.device import choose_device

pytestmark = pytest.mark.e2e

# The worker imports torch and transformers, then trains 10 steps on the tiny model: well under this on 2 CPUs.
JOB_MS = 240_000
# The page's first run estimates a job for the default base model, the bundled one: converting its GGUF (1-2 minutes
# once per data dir, unless the Ask flow did it already).
FIRST_RUN_MS = 300_000
TRAINING_PROGRESS = '[data-testid="stProgress"]'


@pytest.fixture
def app_db(app):
    """The app's own embedded database, opened from the test process; stops the workers the page started."""
    db = open_database(Settings(data_dir=app.data_dir, database_url=None))
    yield db
    with db.engine.connect() as connection:
        pids = connection.execute(text("SELECT pid FROM workers")).scalars().all()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def type_into(page, box, value: str) -> None:
    """Fill an st.text_input and commit it with Enter (a rerun)."""

    def type_value() -> None:
        box.fill(value)
        box.press("Enter")

    click_and_wait(page, type_value)
    expect(box).to_have_value(value)


def test_start_a_job_watch_it_live_and_find_the_adapter(page, app_url, app_db, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    dataset = make_dataset(app_db, f"e2e-facts-{suffix}")
    model = build_tiny_model(tmp_path / "tiny-llama", "llama")
    adapter = f"e2e-adapter-{suffix}"

    open_page(page, app_url, "Fine-tune", timeout_ms=FIRST_RUN_MS)
    expect(page.get_by_role("heading", name="Fine-tune", exact=True)).to_be_visible()
    panel = open_tab(page, "New job")
    choose_option(page, "Training set", dataset)
    choose_option(page, "Base model", "Other…")
    model_box = panel.get_by_label("Model id or folder", exact=True)
    type_into(page, model_box, str(model))
    preset = page.locator('[data-testid="stRadio"]').filter(has_text="Preset")
    click_and_wait(page, preset.get_by_text("quick CPU check", exact=True))
    expect(preset.get_by_role("radio", checked=True)).to_have_count(1)
    name_box = panel.get_by_label("Adapter name", exact=True)
    type_into(page, name_box, adapter)

    estimate = panel.locator('[data-testid="stCaptionContainer"]').filter(has_text=re.compile(r"^Estimate:"))
    expect(estimate).to_be_visible()
    device, _ = choose_device()  # the app runs on this machine: the cpu here, cuda on a GPU machine
    assert estimate.inner_text().startswith(f"Estimate: 10 steps on the {device}"), estimate.inner_text()
    assert alerts(page, "error") == [], alerts(page)

    started = time.monotonic()
    click_and_wait(page, page.get_by_role("button", name="Start"))
    jobs_tab = page.get_by_role("tab").filter(has_text=re.compile(r"^\s*Jobs"))
    expect(jobs_tab).to_have_attribute("aria-selected", "true")
    assert alerts(page, "error") == [], alerts(page)
    expect(selectbox(page, "Job")).to_have_value(re.compile(rf"^#\d+ {re.escape(adapter)}$"))

    # The live view: progress bar, then (once the worker logs a step) the loss chart with its caption, and the log.
    progress = page.locator(TRAINING_PROGRESS)
    expect(progress).to_be_visible()
    chart = page.locator('[data-testid="stVegaLiteChart"]')
    caption = page.locator('[data-testid="stCaptionContainer"]').filter(has_text=re.compile(r"^loss "))
    expect(chart).to_be_visible(timeout=JOB_MS)
    expect(caption).to_be_visible(timeout=JOB_MS)
    loss_line = caption.first.inner_text()
    assert re.match(r"^loss \d+\.\d{4} · lr [\d.]+e[-+]\d+ · \d+ tokens/s", loss_line), loss_line
    seen_while_running = progress.inner_text().startswith("Training")
    expect(page.locator('[data-testid="stCode"]')).to_be_visible()

    # Finished: the fragment stops polling and the page redraws the job once.
    expect(progress).to_contain_text(re.compile(r"^Finished: step 10 of 10"), timeout=JOB_MS)
    elapsed = time.monotonic() - started
    assert alerts(page, "error") == [], alerts(page)
    expect(chart).to_be_visible()
    expect(caption).to_be_visible()
    expect(page.locator('[data-testid="stCode"]')).not_to_have_text("(no output yet)")
    # the grid's accessible table can lag the redraw by a moment: poll it briefly
    mine: list = []
    for _ in range(20):
        rows = read_dataframe(page.locator('[data-testid="stDataFrame"]').first)
        mine = [(r.get("adapter"), r.get("status"), r.get("step")) for r in rows if r.get("adapter") == adapter]
        if mine == [(adapter, "succeeded", "10/10")]:
            break
        page.wait_for_timeout(500)
    assert mine == [(adapter, "succeeded", "10/10")], rows
    print(f"\nJob selectbox shows {selectbox(page, 'Job').input_value()!r}; its options: {selectbox_options(page, 'Job')}")
    print(f"\njob finished {elapsed:.0f} s after Start; loss seen while training: {seen_while_running}")

    adapters = open_tab(page, "Adapters")
    expect(adapters.get_by_text(adapter, exact=True)).to_be_visible()
    expect(adapters.locator('[data-testid="stMarkdownContainer"]').filter(has_text=f"{adapter} · base")).to_have_count(1)
