"""Who can reach the app, in a real browser against `streamlit run`: the password gate and the refusal to serve the
network without a login. Two apps of their own (one start per scenario), not the session's shared app."""

from __future__ import annotations

import stat

import pytest
from e2e_harness import (
    REPO,
    alerts,
    click_and_wait,
    make_data_dir,
    new_page,
    start_app,
    stop_app,
    wait_for_app_idle,
)
from playwright.sync_api import Page, expect

from core.security.passwords import hash_password

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
# URL path of every page in the navigation -> the title that page shows once signed in.
PAGES = {"": "Expert Studio", "documents": "Documents", "ask": "Ask", "compare": "Compare",
         "training_data": "Training data", "finetune": "Fine-tune", "exams": "Exams", "evaluation": "Evaluation",
         "advisor": "Advisor", "models": "Models"}
ARTIFACTS = REPO / "test-artifacts"
LOGIN_FORM_MS = 20_000


def visit(browser, url: str) -> Page:
    """A new browser context (a new Streamlit session, logged out) opened straight at `url`."""
    page = new_page(browser)
    page.goto(url)
    # Idle right after loading can be the state before the first run starts; every outcome here has a title.
    page.get_by_role("heading", level=1).first.wait_for()
    wait_for_app_idle(page)
    return page


SIDEBAR_CONTENT = '[data-testid="stSidebar"] [data-testid="stElementContainer"], [data-testid="stSidebarNavLink"]'


FIGURES = '[data-testid="stSidebar"] [data-testid="stElementContainer"]'


def assert_login_form_only(page: Page, where: str, *, page_names_shown: bool = False) -> None:
    """The title, the password field, and nothing in the sidebar (no navigation, no library figures). Waits for the
    browser to draw the field (a moment after the run ends) and to drop what an earlier run had drawn (after a
    logout the empty sidebar frame itself stays). `page_names_shown`: the first request after a start that goes
    straight to a page runs in Streamlit's legacy pages/-folder mode, whose own navigation lists the pages'
    names (each page then shows the login form itself; no data)."""
    expect(page.locator('input[type="password"]'), f"password field at {where}").to_have_count(1, timeout=LOGIN_FORM_MS)
    expect(page.locator(FIGURES if page_names_shown else SIDEBAR_CONTENT), f"sidebar content at {where}").to_have_count(0)
    expect(page.get_by_role("heading", level=1), f"titles at {where}").to_have_text(["Expert Studio"])


def assert_private(data_dir) -> None:
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    assert mode & 0o077 in (0, 0o010), oct(mode)  # owner only (plus group traverse for the embedded Postgres as root)


@pytest.fixture(scope="module")
def password_app(browser):
    """An app with a team password. Its very first visitor opens a page's own URL, as an attacker after a restart
    would; that page stays open for the first test."""
    ARTIFACTS.mkdir(exist_ok=True)
    app = start_app(make_data_dir(), log_path=ARTIFACTS / "e2e-auth-password.log", extra_env={
        "EXPERT_STUDIO_PASSWORD_HASH": hash_password(PASSWORD, n=2**10),
        "EXPERT_STUDIO_LOGIN_DELAY_SECONDS": "0.2",  # short for the test; the default is 1 s, doubling
    })
    app.first_page = visit(browser, f"{app.url}/documents")
    yield app
    app.first_page.context.close()
    stop_app(app, remove_data=True)


@pytest.fixture(scope="module")
def open_network_app():
    """An app on every interface with no login at all."""
    ARTIFACTS.mkdir(exist_ok=True)
    app = start_app(make_data_dir(), log_path=ARTIFACTS / "e2e-auth-refusal.log", address="0.0.0.0",
                    extra_env={"EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY": "false"})
    yield app
    stop_app(app, remove_data=True)


def test_first_visit_after_a_start_straight_to_a_page_gets_the_login_form(password_app):
    assert_login_form_only(password_app.first_page, "/documents as the first request after the start", page_names_shown=True)
    expect(password_app.first_page.get_by_role("heading", name="Documents", exact=True)).to_have_count(0)


def test_every_page_url_shows_only_the_login_form_while_logged_out(password_app, browser):
    for path, title in PAGES.items():
        page = visit(browser, f"{password_app.url}/{path}")
        try:
            assert_login_form_only(page, f"/{path}")
            if title != "Expert Studio":
                expect(page.get_by_role("heading", name=title, exact=True)).to_have_count(0)
        finally:
            page.context.close()


def test_wrong_password_refused_right_one_admitted_then_log_out(password_app, browser):
    page = visit(browser, f"{password_app.url}/advisor")
    try:
        box = page.get_by_label("Password", exact=True)
        sign_in = page.get_by_role("button", name="Sign in")

        box.fill("not the password at all")
        click_and_wait(page, sign_in)
        expect(page.locator('[data-testid="stAlertContentError"]')).to_contain_text("Wrong password.")
        assert_login_form_only(page, "after a wrong password")

        box.fill(PASSWORD)
        click_and_wait(page, sign_in)
        # Admitted, on the page the URL asked for, with the navigation and a way out.
        expect(page.get_by_role("heading", name="Advisor", exact=True)).to_be_visible()
        expect(page.locator('input[type="password"]')).to_have_count(0)  # the form's stale copy fades out after the run
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.locator('[data-testid="stSidebarNavLink"]')).to_have_count(len(PAGES))
        expect(sidebar.get_by_text("Signed in with the team password")).to_be_visible()
        assert_private(password_app.data_dir)

        link = sidebar.locator('[data-testid="stSidebarNavLink"]').filter(has=page.locator('span[label="Home"]'))
        click_and_wait(page, link)
        expect(page.get_by_role("heading", name="Start here")).to_be_visible()  # the session stays signed in

        click_and_wait(page, sidebar.get_by_role("button", name="Log out"))
        assert_login_form_only(page, "after Log out")
    finally:
        page.context.close()


def test_every_interface_without_a_login_is_refused_with_the_way_out(open_network_app, browser):
    for path in ("documents", ""):  # the first request straight to a page, then the home URL
        page = visit(browser, f"{open_network_app.url}/{path}")
        try:
            expect(page.get_by_role("heading", level=1), f"titles at /{path}").to_have_text(
                ["Expert Studio is not served on this address"])
            first = path == "documents"  # the first request after the start: legacy pages/ mode lists page names
            expect(page.locator(FIGURES if first else SIDEBAR_CONTENT), f"sidebar content at /{path}").to_have_count(0)
            assert page.locator('input[type="password"]').count() == 0
            (message,) = alerts(page, "error")
            assert "no login is configured" in message
            for step in ("--server.address 127.0.0.1", "python -m core auth hash-password", "EXPERT_STUDIO_PASSWORD_HASH",
                         ".streamlit/secrets.toml"):
                assert step in message, step
        finally:
            page.context.close()
    assert_private(open_network_app.data_dir)
