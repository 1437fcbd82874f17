"""End-to-end harness: the real app (`streamlit run`) on a fresh embedded database, driven by Debian's chromium.

A new flow is a `tests/e2e/test_<page>_flow.py` module:

    import pytest
    from e2e_harness import click_and_wait, open_page, open_tab
    from playwright.sync_api import expect

    pytestmark = pytest.mark.e2e

    def test_something(page, app_url):
        open_page(page, app_url, "Ask")            # via the sidebar link; waits for the run to finish
        click_and_wait(page, page.get_by_role("button", name="Ask"))
        expect(page.get_by_text("...")).to_be_visible()

Fixtures: `app` (the RunningApp: url, data_dir, log_tail()), `app_url`, `browser`, `page` (fresh context per test,
60 s timeouts; on failure a screenshot, the page HTML and the app log tail land in test-artifacts/). All tests share
one app and one database for the session: a flow that needs a clean slate makes its own collection
(`create_collection`). Every test under tests/e2e gets the `e2e` marker (`-m "not e2e"` skips them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_harness import CHROMIUM, REPO, launch_browser, make_data_dir, new_page, start_app, stop_app

ARTIFACTS = REPO / "test-artifacts"
E2E_DIR = Path(__file__).resolve().parent
_REPORTS = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def app():
    data_dir = make_data_dir()
    ARTIFACTS.mkdir(exist_ok=True)
    running = start_app(data_dir, log_path=ARTIFACTS / "e2e-streamlit.log")
    yield running
    stop_app(running, remove_data=True)


@pytest.fixture(scope="session")
def app_url(app) -> str:
    return app.url


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"end-to-end tests need chromium at {CHROMIUM} (apt-get install chromium, or set E2E_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app, request):
    page = new_page(browser)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    yield page
    reports = request.node.stash.get(_REPORTS, {})
    if any(r.failed for r in reports.values()):
        _save_artifacts(request.node.nodeid, page, app, console)
    page.context.close()


def _save_artifacts(nodeid: str, page, app, console: list[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    stem = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)
    try:
        page.screenshot(path=f"{stem}.png", full_page=True)
        Path(f"{stem}.html").write_text(page.content())
    except Exception as error:  # noqa: BLE001 - the page may be gone; the log still helps
        console.append(f"(no screenshot: {error})")
    Path(f"{stem}.log").write_text(
        f"url: {page.url}\n\nbrowser console errors:\n" + "\n".join(console) + f"\n\napp log (tail):\n{app.log_tail(200)}\n"
    )
