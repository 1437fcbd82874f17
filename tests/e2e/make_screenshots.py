"""Make the README screenshots: the app on a throwaway database, four small made-up documents, three PNGs.

    PYTHONPATH=. .venv/bin/python tests/e2e/make_screenshots.py [--out docs/images]

Writes documents.png (the Library tab), search.png (a search with its passages) and ask.png (an answer from
the bundled SmolLM2 with its sources; its first load converts the model: 1-2 minutes). Needs chromium at
/usr/bin/chromium, like the end-to-end tests. Not a test: pytest does not collect this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from e2e_harness import (
    REPO,
    VIEWPORT,
    alerts,
    ask_question,
    assistant_message,
    choose_option,
    click_and_wait,
    create_collection,
    launch_browser,
    new_page,
    open_page,
    open_tab,
    set_number,
    start_app,
    stop_app,
    upload_files,
)
from playwright.sync_api import expect, sync_playwright

MANUAL_MD = """\
# Centrifugal pump P-101: maintenance manual

## 1. Daily checks

Walk past the pump once per shift. Listen for changes in noise, check that the discharge pressure gauge reads
between 4.5 and 5.2 bar, and look for leaks at the mechanical seal and the flange joints.

## 2. Impeller inspection

Inspect the impeller every 500 operating hours. Look for cavitation pitting on the vane tips and erosion on
the suction eye. A pitted impeller loses head and must be replaced before the next production campaign.

## 3. Mechanical seal

A seal that weeps more than ten drops per minute is worn. Replace both seal faces together, never one, and
flush the seal chamber with clean water before restarting the pump.

## 4. Bearings and lubrication

Grease the drive-end and non-drive-end bearings every three months with 15 g of lithium complex grease.
A bearing temperature above 80 °C at steady load points to over-greasing or to coupling misalignment.

## 5. Coupling alignment

Check shaft alignment with the laser tool after any motor or pump removal. The tolerance is 0.05 mm offset
and 0.05 mm per 100 mm angularity. Record the readings in the maintenance log.
"""

SAFETY_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Lockout/tagout procedure LOTO-07</title></head>
<body>
<h1>Lockout/tagout procedure LOTO-07: pumps and motors</h1>
<p>This procedure applies to every job that opens a pump casing or touches a motor terminal box.</p>
<h2>Before work</h2>
<ol>
  <li>Tell the control room which equipment is being isolated and why.</li>
  <li>Stop the pump from the local station, then open the motor breaker at the MCC.</li>
  <li>Fit your personal padlock and a signed tag to the breaker. One lock per person working.</li>
  <li>Close the suction and discharge valves and lock them with chain and padlock.</li>
  <li>Open the casing drain and vent to release the remaining pressure.</li>
</ol>
<h2>Verify isolation</h2>
<p>Press the local start button: the pump must not start. Check zero voltage at the terminals with a tested
meter. Only then may the casing be opened.</p>
<h2>After work</h2>
<p>Remove tools, refit guards, and remove your own lock only. The last person to remove a lock informs the
control room before the breaker is closed.</p>
</body>
</html>
"""

PARTS_CSV = """\
part_number,description,equipment,quantity_in_stock,reorder_level,supplier
PS-1010,Mechanical seal kit 45 mm,P-101,4,2,FlowSeal
PS-1022,Impeller 250 mm bronze,P-101,1,1,PumpWorks
PS-1031,Deep groove ball bearing 6309,P-101,6,4,BearingHub
PS-1032,Angular contact bearing 7309,P-101,2,2,BearingHub
PS-1040,Coupling insert elastomer,P-101,3,2,DriveParts
VL-2001,Gate valve stem packing set DN100,V-210,8,4,ValveSupply
VL-2015,Relief valve spring 6 bar,PRV-3,2,1,ValveSupply
GR-0007,Lithium complex grease 400 g,general,12,6,LubeCo
"""

MEMO_TXT = """\
Memo: cooling water line, findings from the March shutdown

To: maintenance team
From: reliability engineer

1. Gate valve V-210 stuck half-way when exercised. The stem was cleaned and lubricated with graphite paste;
   it now closes in 14 turns. Exercise it again next quarter and never force it with a bar.

2. The pressure relief valve PRV-3 on the cooling loop opened at 6.3 bar during the yearly test, above its
   6.0 bar set point. The spring was replaced (part VL-2015) and the retest passed at 6.0 bar.

3. Pump P-101 showed cavitation pitting on two impeller vanes at 480 hours. We propose moving the suction
   strainer cleaning from monthly to every two weeks to keep the suction pressure up.
"""

DOCUMENTS = {
    "pump-p101-maintenance.md": MANUAL_MD,
    "loto-07-lockout-procedure.html": SAFETY_HTML,
    "spare-parts-p101.csv": PARTS_CSV,
    "memo-cooling-water-shutdown.txt": MEMO_TXT,
}
QUERY = "what to do when the impeller shows cavitation pitting"
# The bundled 135M model answers this one well (greedy decoding: the same answer every time).
QUESTION = "Which grease is used for the pump bearings?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder for the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    app = start_app()
    try:
        with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
            paths = []
            for name, text in DOCUMENTS.items():
                paths.append(Path(folder) / name)
                paths[-1].write_text(text)
            browser = launch_browser(playwright)
            page = new_page(browser)

            open_page(page, app.url, "Documents")
            create_collection(page, "Plant maintenance")
            upload_files(page, paths)
            click_and_wait(page, page.get_by_role("button", name="Add to collection"))
            expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_have_count(len(paths))
            print("\n".join(alerts(page)))

            library = open_tab(page, "Library")
            expect(library.locator('[data-testid="stDataFrame"]')).to_be_visible()
            page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)  # no hover effects in the picture
            page.wait_for_timeout(500)
            page.screenshot(path=args.out / "documents.png")

            search = open_tab(page, "Search")
            search.get_by_label("Search the collection").fill(QUERY)
            click_and_wait(page, search.get_by_role("button", name="Search", exact=True))
            expect(search.get_by_text("[1] ")).to_be_visible()
            search.get_by_label("Search the collection").scroll_into_view_if_needed()
            page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)
            page.wait_for_timeout(500)
            page.screenshot(path=args.out / "search.png")

            open_page(page, app.url, "Ask", timeout_ms=300_000)  # loads (the first time converts) the model
            choose_option(page, "Collection", "Plant maintenance")
            page.get_by_text("Model and generation settings").click()
            set_number(page, "Max new tokens", 64)
            page.get_by_text("Model and generation settings").click()  # closed again: room for the answer
            ask_question(page, QUESTION, timeout_ms=180_000)
            answer = assistant_message(page)
            expect(answer.locator('[data-testid="stCaptionContainer"]').filter(has_text="tokens/s")).to_be_visible()
            print(answer.inner_text())
            # From the page's controls down to the answer and its sources (the chat scrolled to its end).
            page.get_by_role("heading", name="Ask", exact=True).scroll_into_view_if_needed()
            page.locator('[data-testid="stChatInputTextArea"]').blur()  # no focus ring on the chat input
            page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)
            page.wait_for_timeout(500)
            page.screenshot(path=args.out / "ask.png")
            browser.close()
    finally:
        stop_app(app, remove_data=True)
    print(f"wrote documents.png, search.png and ask.png in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
