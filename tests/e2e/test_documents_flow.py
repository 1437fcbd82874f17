"""Documents page in a real browser: upload two files at once, see them in the library, find a passage by search."""

from __future__ import annotations

import re
import uuid

import pytest
from e2e_harness import (
    alerts,
    click_and_wait,
    create_collection,
    open_page,
    open_tab,
    read_dataframe,
    search_results,
    selectbox,
    selectbox_options,
    tab_labels,
    upload_files,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

PUMPS_MD = """\
# Centrifugal pump P-101: maintenance notes

## Impeller inspection

Inspect the impeller every 500 operating hours. Look for cavitation pitting on the vane tips and for erosion
on the suction eye; a pitted impeller loses head and must be replaced before the next campaign.

## Mechanical seal

A mechanical seal that weeps more than ten drops per minute is worn. Replace both seal faces together and
flush the seal chamber with clean water before restarting the pump.

## Bearings

Grease the bearings every three months with lithium complex grease. Bearing temperature above 80 °C at
steady load points to over-greasing or misalignment of the coupling.
"""

VALVES_TXT = """\
Memo: valves on the cooling water line

Gate valves are exercised once a quarter: close fully, then open fully, and note the number of turns.
A gate valve that sticks half-way is lubricated with graphite paste on the stem; never force it with a bar.

The pressure relief valve on the cooling loop is set to open at 6 bar and is tested every year by the
maintenance team, with the test recorded in the valve log book.
"""


def test_upload_two_files_then_browse_and_search(page, app_url, tmp_path):
    (tmp_path / "pumps.md").write_text(PUMPS_MD)
    (tmp_path / "valves.txt").write_text(VALVES_TXT)

    open_page(page, app_url, "Documents")
    expect(page.get_by_role("heading", name="Documents", exact=True)).to_be_visible()
    create_collection(page, f"e2e-{uuid.uuid4().hex[:8]}")  # a clean slate, whatever other flows stored
    assert tab_labels(page) == ["Upload", "Library (0)", "Search"]
    documents_before, chunks_before = library_stats(page)

    # Upload: both files in one go; a success message per file with its chunk count.
    upload_files(page, [tmp_path / "pumps.md", tmp_path / "valves.txt"])
    click_and_wait(page, page.get_by_role("button", name="Add to collection"))
    success = page.locator('[data-testid="stAlertContentSuccess"]')
    expect(success).to_have_count(2)
    messages = alerts(page, "success")
    chunks = {}
    for name in ("pumps.md", "valves.txt"):
        message = next((m for m in messages if m.startswith(f"{name}:")), None)
        assert message, f"no success message for {name} in {messages} (all alerts: {alerts(page)})"
        match = re.fullmatch(rf"{re.escape(name)}: added, (\d+) chunks?\.", message)
        assert match, message
        chunks[name] = int(match.group(1))
    assert chunks["pumps.md"] >= 1 and chunks["valves.txt"] >= 1
    # The counts follow the upload without a manual reload.
    assert tab_labels(page)[1] == "Library (2)"
    assert library_stats(page) == (documents_before + 2, chunks_before + sum(chunks.values()))

    # Library: the table lists both files with the chunk counts the upload reported, and so does the picker.
    library = open_tab(page, "Library")
    rows = read_dataframe(library.locator('[data-testid="stDataFrame"]'))
    assert sorted((r["name"], r["type"], int(r["chunks"])) for r in rows) == [
        ("pumps.md", "markdown", chunks["pumps.md"]),
        ("valves.txt", "text", chunks["valves.txt"]),
    ]
    assert sorted(selectbox_options(page, "Document")) == [
        f"pumps.md · {count(chunks['pumps.md'], 'chunk')}",
        f"valves.txt · {count(chunks['valves.txt'], 'chunk')}",
    ]

    # Search: the impeller passage of pumps.md comes first, under its section heading.
    search = open_tab(page, "Search")
    search.get_by_label("Search the collection").fill("how often should the impeller be checked for cavitation damage?")
    click_and_wait(page, search.get_by_role("button", name="Search", exact=True))
    expect(search.get_by_text("[1] pumps.md")).to_be_visible()
    results = search_results(page)
    assert results, alerts(page)
    first = results[0]
    assert first["title"] == "[1] pumps.md · § Centrifugal pump P-101: maintenance notes > Impeller inspection", results
    assert "every 500 operating hours" in first["text"]
    assert "cavitation pitting" in first["text"]
    assert first["caption"].startswith("score ")

    # A question about the valves finds the memo instead.
    search.get_by_label("Search the collection").fill("At what pressure does the relief valve open?")
    click_and_wait(page, search.get_by_role("button", name="Search", exact=True))
    expect(search.get_by_text("[1] valves.txt")).to_be_visible()
    assert "open at 6 bar" in search_results(page)[0]["text"]

    # Delete the memo from the library: the page stays on the Library tab, with one document left.
    library = open_tab(page, "Library")
    selectbox(page, "Document").click()
    click_and_wait(page, page.get_by_role("option", name=f"valves.txt · {count(chunks['valves.txt'], 'chunk')}"))
    page.get_by_role("button", name="Delete document").click()
    click_and_wait(page, page.locator('[data-testid="stPopoverBody"]').get_by_role("button", name="Delete", exact=True))
    expect(page.get_by_role("tab", selected=True)).to_have_text("Library (1)")
    names: list = []
    for _ in range(20):  # the grid's accessible table can lag the redraw by a moment: poll it briefly
        names = [r["name"] for r in read_dataframe(library.locator('[data-testid="stDataFrame"]'))]
        if names == ["pumps.md"]:
            break
        page.wait_for_timeout(500)
    assert names == ["pumps.md"]
    assert library_stats(page) == (documents_before + 1, chunks_before + chunks["pumps.md"])


def count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def library_stats(page) -> tuple[int, int]:
    """Documents and chunks in the whole library, as the sidebar counts them."""
    text = page.locator('[data-testid="stSidebarContent"]').inner_text()
    match = re.search(r"([\d,]+) documents? · ([\d,]+) chunks?", text)
    assert match, text
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))
