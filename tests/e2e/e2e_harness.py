"""Run the real app and drive it in Debian's chromium: shared by conftest.py (pytest) and make_screenshots.py.

Nothing here is page-specific except `search_results` (Documents) and `ask_question` (Ask); a new page's flow reuses
`open_page`, `open_tab`, `click_and_wait`, `upload_files`, `read_dataframe`, `selectbox_options`, `choose_option`,
`set_number`, `fill_and_commit`, `open_expander`, `alerts` and `wait_for_app_idle`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, Playwright, expect

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags chromium keeps trying to reach Google services and logs refusals.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# The first page load starts the embedded Postgres and the first upload loads the embedding model: slow on 2 CPUs.
DEFAULT_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1400, "height": 900}


# --- the app server -------------------------------------------------------------------------------------------


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data_dir(prefix: str = "expert-studio-e2e-") -> Path:
    """A fresh data dir under /tmp: the embedded Postgres runs as the user `pgserver`, so it must be able to enter it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def start_app(data_dir: Path | None = None, log_path: Path | None = None, timeout: float = 90.0,
              extra_env: dict[str, str] | None = None, address: str = "127.0.0.1") -> RunningApp:
    """`streamlit run streamlit_app.py` on a free port and its own embedded database; returns once /_stcore/health is ok.

    No login unless `extra_env` sets one (e.g. EXPERT_STUDIO_PASSWORD_HASH); `address` is --server.address (the app
    is still reached through 127.0.0.1).
    """
    data_dir = data_dir or make_data_dir()
    log_path = log_path or data_dir / "streamlit.log"
    port = free_port()
    env = {**os.environ, "EXPERT_STUDIO_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    env.pop("EXPERT_STUDIO_DATABASE_URL", None)
    env.pop("EXPERT_STUDIO_PASSWORD_HASH", None)
    env.update(extra_env or {})
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", address,
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop_app
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    app = RunningApp(f"http://127.0.0.1:{port}", process, data_dir, log_path, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            stop_app(app)
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return app
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_app(app)
            raise RuntimeError(f"streamlit did not answer {app.url}/_stcore/health within {timeout:.0f} s:\n{app.log_tail()}")
        time.sleep(0.5)


def stop_app(app: RunningApp, remove_data: bool = False) -> None:
    """SIGTERM the app's process group (the app then stops its embedded Postgres), SIGKILL after 20 s."""
    if app.process.poll() is None:
        try:
            os.killpg(app.process.pid, signal.SIGTERM)
            app.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(app.process.pid, signal.SIGKILL)
            app.process.wait(timeout=10)
        except ProcessLookupError:
            pass
    _stop_leftover_postgres(app.data_dir / "postgres")
    if app._log_file is not None:
        app._log_file.close()
    if remove_data:
        shutil.rmtree(app.data_dir, ignore_errors=True)


def _stop_leftover_postgres(pgdata: Path) -> None:
    """Postgres runs in its own session; if the app was killed before stopping it, fast-shutdown it by its pid file."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


# --- the browser ----------------------------------------------------------------------------------------------


def launch_browser(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)


def new_page(browser: Browser, viewport: dict | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Page:
    """A page in a fresh context (its own Streamlit session), with the long default timeouts the app needs."""
    context = browser.new_context(viewport=viewport or VIEWPORT)
    context.set_default_timeout(timeout_ms)
    expect.set_options(timeout=timeout_ms)
    return context.new_page()


# --- driving Streamlit ----------------------------------------------------------------------------------------

APP_ROOT = '[data-testid="stApp"]'
IDLE_APP = '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]'


def wait_for_app_idle(page: Page, timeout_ms: float | None = None) -> None:
    """Wait until the script has finished its run (Streamlit's "Running..." status widget is gone)."""
    page.locator(IDLE_APP).wait_for(state="attached", timeout=timeout_ms)
    page.locator('[data-testid="stStatusWidget"]').filter(has_text=re.compile("Running", re.I)).wait_for(
        state="detached", timeout=timeout_ms
    )


def click_and_wait(page: Page, target: Locator | Callable[[], None], timeout_ms: float | None = None) -> None:
    """Click a widget (or run an action) that reruns the script, and wait for that run, and any st.rerun, to finish.

    Waiting only for "idle" right after a click can pass before the run starts; this watches the app root for a
    "running" state first (a run too fast to be seen still counts once 5 s pass without one).
    """
    page.evaluate(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            window.__e2eRunSeen = false;
            if (window.__e2eObserver) window.__e2eObserver.disconnect();
            window.__e2eObserver = new MutationObserver(() => {
                if (app.getAttribute('data-test-script-state') !== 'notRunning') window.__e2eRunSeen = true;
            });
            window.__e2eObserver.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
        }"""
    )
    if callable(target) and not isinstance(target, Locator):
        target()
    else:
        target.click()
    try:
        page.wait_for_function("() => window.__e2eRunSeen", timeout=5_000)
    except Exception:  # noqa: BLE001 - the run may have come and gone between two polls
        pass
    wait_for_app_idle(page, timeout_ms)


def open_app(page: Page, app_url: str) -> None:
    page.goto(app_url)
    wait_for_app_idle(page)


def open_page(page: Page, app_url: str, title: str, timeout_ms: float | None = None) -> None:
    """Go to a page through its link in the sidebar navigation (loading the app first if this page is elsewhere).

    `timeout_ms` bounds the page's first run (the Ask page loads the language model there: minutes the first time).
    """
    if not page.url.startswith(app_url):
        open_app(page, app_url)
    link = page.locator('[data-testid="stSidebarNavLink"]').filter(has=page.locator(f'span[label="{title}"]'))
    click_and_wait(page, link, timeout_ms)
    expect(link).to_have_attribute("aria-current", "page")
    wait_for_app_idle(page, timeout_ms)


def open_tab(page: Page, name: str) -> Locator:
    """Click the tab whose label starts with `name` ("Library" finds "Library (2)"); returns the open tab's panel.

    The panel locator is resolved on each use (the panel is re-created when a rerun changes the tab labels).
    """
    tab = page.get_by_role("tab").filter(has_text=re.compile(rf"^\s*{re.escape(name)}"))
    click_and_wait(page, tab)
    expect(tab).to_have_attribute("aria-selected", "true")
    return page.locator('[data-testid="stTabPanel"]:visible')


def tab_labels(page: Page) -> list[str]:
    return [t.strip() for t in page.get_by_role("tab").all_inner_texts()]


def upload_files(page: Page, paths: Iterable[Path | str], scope: Locator | Page | None = None) -> None:
    """Put files into the (first) st.file_uploader in `scope`, and wait until each is listed as uploaded."""
    paths = [Path(p) for p in paths]
    scope = scope or page
    uploader = scope.locator('[data-testid="stFileUploader"]').first
    uploader.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(paths)
    for path in paths:
        # long names are shortened on the chip; its remove button carries the whole name
        expect(uploader.get_by_role("button", name=f"Remove {path.name}", exact=True)).to_be_visible()
    expect(uploader.get_by_role("progressbar")).to_have_count(0)  # the browser has sent them to the server


def alerts(page: Page, kind: str | None = None) -> list[str]:
    """Texts of the st.success/info/warning/error boxes shown now; `kind` ("success", "error", ...) filters them."""
    selector = f'[data-testid="stAlertContent{kind.capitalize()}"]' if kind else '[data-testid="stAlert"]'
    return [t.strip() for t in page.locator(f"{selector}:visible").all_inner_texts()]


def read_dataframe(frame: Locator) -> list[dict[str, str]]:
    """Rows of an st.dataframe: the grid draws on a canvas but keeps an accessible table inside it."""
    table = frame.locator('table[role="grid"]')
    table.locator('th[role="columnheader"]').first.wait_for(state="attached")
    return frame.evaluate(
        """(frame) => {
            const table = frame.querySelector('table[role="grid"]');
            const headers = [...table.querySelectorAll('th[role="columnheader"]')].map(th => th.textContent.trim());
            return [...table.querySelectorAll('tbody tr')].map(row => Object.fromEntries(
                [...row.querySelectorAll('td[role="gridcell"]')].map((td, i) => [headers[i], td.textContent.trim()])));
        }"""
    )


def selectbox(page: Page | Locator, label: str) -> Locator:
    """The input of the st.selectbox labelled `label`; its value is the shown option (`expect(...).to_have_value`)."""
    return page.get_by_role("combobox", name=label, exact=True)


def selectbox_options(page: Page, label: str) -> list[str]:
    """Open the selectbox labelled `label`, read its options, close it again."""
    selectbox(page, label).click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = [t.strip() for t in options.all_inner_texts()]
    page.keyboard.press("Escape")
    expect(options).to_have_count(0)
    return texts


def choose_option(page: Page, label: str, option: str) -> None:
    """Pick `option` in the st.selectbox labelled `label`, and wait for the rerun."""
    selectbox(page, label).click()
    click_and_wait(page, page.get_by_role("option", name=option, exact=True))
    expect(selectbox(page, label)).to_have_value(option)


def set_number(scope: Page | Locator, label: str, value: int | float) -> None:
    """Type `value` into the st.number_input labelled `label` and commit it with Enter (a rerun)."""
    page = scope if isinstance(scope, Page) else scope.page
    box = scope.get_by_label(label, exact=True)

    def type_value() -> None:
        box.fill(str(value))
        box.press("Enter")

    click_and_wait(page, type_value)
    expect(box).to_have_value(str(value))


def fill_and_commit(page: Page, box: Locator, value: str, key: str = "Enter") -> None:
    """Type `value` into a text input (or area, with key="Control+Enter") and commit it: a rerun."""

    def type_value() -> None:
        box.fill(value)
        box.press(key)

    click_and_wait(page, type_value)
    expect(box).to_have_value(value)


def open_expander(page: Page, title: str) -> Locator:
    """Open the st.expander titled `title` and wait until it has unfolded (a widget clicked while it still grows
    can miss); returns the expander."""
    expander = page.locator('[data-testid="stExpander"]').filter(has_text=title).first
    expander.locator("summary").click()
    last = None
    for _ in range(50):
        box = expander.bounding_box()
        if box is not None and box == last:
            break
        last = box
        page.wait_for_timeout(150)
    return expander


def create_collection(page: Page, name: str) -> None:
    """Make a collection through the "New collection" popover; the picker then selects it and the popover closes."""
    click_and_wait(page, page.get_by_role("button", name="New collection"))  # opening it reruns the page
    dialog = page.locator('[data-testid="stPopoverBody"]')
    dialog.get_by_label("Name").fill(name)
    click_and_wait(page, dialog.get_by_role("button", name="Create"))
    expect(selectbox(page, "Collection")).to_have_value(name)
    expect(dialog).to_be_hidden()


def search_results(page: Page) -> list[dict[str, str]]:
    """The Documents page's search hits, in rank order: title ("[1] file · where"), caption (scores) and passage text."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
            .filter(md => /^\\[\\d+\\] /.test(md.innerText.trim()) && md.offsetParent !== null)
            .map(md => {
                const block = md.closest('[data-testid="stVerticalBlock"]');
                const caption = block.querySelector('[data-testid="stCaptionContainer"]');
                const text = block.querySelector('[data-testid="stText"]');
                return {title: md.innerText.trim(), caption: caption ? caption.innerText.trim() : '',
                        text: text ? text.innerText.trim() : ''};
            })"""
    )


# The text of the newest assistant chat message, recorded at each DOM change while the script runs: what the
# answer column showed (its markdown, without the captions), its timings caption, and the app's script state.
_WATCH_ANSWER = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    const snapshots = [];
    window.__e2eAnswer = snapshots;
    if (window.__e2eAnswerObserver) window.__e2eAnswerObserver.disconnect();
    const record = () => {
        const messages = document.querySelectorAll('[aria-label="Chat message from assistant"]');
        const message = messages[messages.length - 1];
        if (!message) return;
        const column = message.querySelector('[data-testid="stColumn"]') || message;
        const text = [...column.querySelectorAll('[data-testid="stMarkdownContainer"]')]
            .filter(md => !md.closest('[data-testid="stCaptionContainer"]'))
            .map(md => md.innerText.trim()).filter(t => t).join('\\n');
        const caption = [...column.querySelectorAll('[data-testid="stCaptionContainer"]')]
            .map(c => c.innerText.trim()).join('\\n');
        const running = app.getAttribute('data-test-script-state') === 'running';
        const last = snapshots[snapshots.length - 1];
        if (!last || last.text !== text || last.caption !== caption || last.running !== running) {
            snapshots.push({text, caption, running, at: performance.now()});
        }
    };
    window.__e2eAnswerObserver = new MutationObserver(record);
    window.__e2eAnswerObserver.observe(document.body, {subtree: true, childList: true, characterData: true,
                                                       attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def ask_question(page: Page, question: str, timeout_ms: float | None = None) -> list[dict]:
    """Send `question` through the Ask page's chat input and wait for the answer's run to finish.

    Returns what the newest assistant message showed along the way, one snapshot per change:
    {"text": answer text, "caption": timings caption, "running": script still running, "at": ms}.
    """
    page.evaluate(_WATCH_ANSWER)
    box = page.locator('[data-testid="stChatInputTextArea"]')
    box.fill(question)
    click_and_wait(page, lambda: box.press("Enter"), timeout_ms)
    snapshots = page.evaluate("() => { window.__e2eAnswerObserver.disconnect(); return window.__e2eAnswer; }")
    return snapshots


def assistant_message(page: Page) -> Locator:
    """The newest assistant chat message (its content: the answer column and the sources column)."""
    return page.get_by_role("group", name="Chat message from assistant").last
