"""Small documents of every supported format, built in code so the repo keeps no binary fixtures."""

from __future__ import annotations

import io

MARKDOWN = b"""# Centrifugal pumps

A centrifugal pump moves water with a spinning impeller.

## Maintenance

Replace the mechanical seal every 2,000 operating hours.
Check the bearings for noise once a month.

## Troubleshooting

If the pump runs dry, stop it at once: the seal overheats within seconds.
"""

HTML = b"""<!doctype html><html><head><title>Valves</title><style>p {color: red}</style>
<script>console.log("not content")</script></head><body>
<nav>Home | About</nav>
<h1>Valve handbook</h1><p>Valves control the flow of liquids in a pipe.</p>
<h2>Gate valves</h2><p>A gate valve is either fully open or fully closed; never throttle with it.</p>
<h2>Globe valves</h2><ul><li>Good for throttling.</li><li>Higher pressure drop.</li></ul>
</body></html>"""

TEXT = "Boiler memo.\n\nThe relief valve of boiler B2 opens at 3.5 bar. Test it every quarter.\n"

CSV = b"part,description,supplier\nP-100,Impeller for pump A,Acme\nS-200,Mechanical seal kit,SealCo\n"


def pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string, text extractable (no OCR needed)."""
    from fpdf import FPDF

    document = FPDF()
    document.set_font("helvetica", size=12)
    for body in pages:
        document.add_page()
        document.multi_cell(0, 8, body)
    return bytes(document.output())


def encrypted_pdf(pages: list[str], password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(pages))))
    writer.encrypt(user_password=password, owner_password=password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def image_only_pdf() -> bytes:
    """A PDF whose page has no text layer, like a scan."""
    from fpdf import FPDF

    document = FPDF()
    document.add_page()
    document.rect(20, 20, 100, 50, style="F")
    return bytes(document.output())


def docx() -> bytes:
    import docx as python_docx

    document = python_docx.Document()
    document.add_heading("Safety procedure", level=1)
    document.add_paragraph("Wear gloves when handling hot parts.")
    document.add_heading("Lockout", level=2)
    document.add_paragraph("Isolate the power and lock the breaker before opening the cabinet.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Step", "Action"
    table.cell(1, 0).text, table.cell(1, 1).text = "1", "Tag the breaker"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()
