"""Parsing keeps pages and headings, and turns every kind of bad file into a message naming it."""

import pytest
import samples

from core.documents.errors import IngestError
from core.documents.parsing import decode_text, parse_document, safe_filename


def test_pdf_keeps_page_numbers():
    parsed = parse_document("manual.pdf", samples.pdf(["Pumps move water.", "Valves control flow.", "Seals wear out."]))
    assert parsed.file_type == "pdf"
    assert parsed.pages == 3
    assert [(s.page, s.text) for s in parsed.sections] == [
        (1, "Pumps move water."),
        (2, "Valves control flow."),
        (3, "Seals wear out."),
    ]


def test_markdown_sections_carry_their_heading_path():
    parsed = parse_document("pumps.md", samples.MARKDOWN)
    headings = [s.heading for s in parsed.sections]
    assert headings == ["Centrifugal pumps", "Centrifugal pumps > Maintenance", "Centrifugal pumps > Troubleshooting"]
    assert parsed.sections[1].text.startswith("Replace the mechanical seal")
    assert "## Maintenance" not in parsed.text  # headings live in Section.heading, not in the text


def test_markdown_text_before_first_heading_and_setext_headings():
    parsed = parse_document("notes.md", b"Preamble line.\n\nTitle\n=====\n\nBody text.\n")
    assert [(s.heading, s.text) for s in parsed.sections] == [(None, "Preamble line."), ("Title", "Body text.")]


def test_html_drops_scripts_styles_and_navigation_and_keeps_headings():
    parsed = parse_document("valves.html", samples.HTML)
    assert "console.log" not in parsed.text and "color: red" not in parsed.text and "Home | About" not in parsed.text
    by_heading = {s.heading: s.text for s in parsed.sections}
    assert "fully open or fully closed" in by_heading["Valve handbook > Gate valves"]
    assert "Good for throttling." in by_heading["Valve handbook > Globe valves"]


def test_docx_headings_and_tables():
    parsed = parse_document("safety.docx", samples.docx())
    by_heading = {s.heading: s.text for s in parsed.sections}
    assert by_heading["Safety procedure"] == "Wear gloves when handling hot parts."
    assert "1 | Tag the breaker" in by_heading["Safety procedure > Lockout"]


def test_csv_rows_become_self_describing_lines():
    parsed = parse_document("parts.csv", samples.CSV)
    assert parsed.text.splitlines() == [
        "part: P-100; description: Impeller for pump A; supplier: Acme",
        "part: S-200; description: Mechanical seal kit; supplier: SealCo",
    ]


def test_csv_with_semicolons_is_sniffed():
    parsed = parse_document("parts.csv", b"part;price\nP-1;3,50\n")
    assert parsed.text == "part: P-1; price: 3,50"


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8", "Grüße aus München"),
        ("utf-8-sig", "Grüße aus München"),
        ("utf-16", "Grüße aus München"),
        ("cp1252", "Café crème brûlée, naïve façade"),
        ("cp1251", "Привет, как дела? Это тест кодировки."),
    ],
)
def test_text_in_other_encodings_is_decoded(encoding, text):
    assert decode_text("note.txt", text.encode(encoding)) == text


BAD_FILES = [
    ("empty.txt", b"", "is empty"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj garbage", "not a readable PDF"),
    ("locked.pdf", samples.encrypted_pdf(["Secret plans."]), "password-protected"),
    ("scan.pdf", samples.image_only_pdf(), "OCR"),
    ("program.txt", bytes(range(256)) * 20, "not readable text"),
    ("header-only.csv", b"part,description\n", "no data rows"),
    ("nothing.csv", b"\n\n", "has no rows"),
    ("broken.docx", b"PK\x03\x04 not really a zip", "not a readable Word document"),
    ("picture.png", b"\x89PNG\r\n", "unsupported type"),
    ("whitespace.md", b"   \n\n  ", "no text"),
]


@pytest.mark.parametrize(("filename", "data", "expected"), BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_files_get_a_message_naming_the_file(filename, data, expected):
    with pytest.raises(IngestError) as raised:
        parse_document(filename, data)
    assert str(raised.value).startswith(f"{filename}: ")
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\ann\\report.pdf", "report.pdf"),
        ("notes\x00\x07.md", "notes.md"),
        ("  .hidden.txt ", "hidden.txt"),
        ("Überblick – Pumpen (v2).md", "Überblick – Pumpen (v2).md"),
    ],
)
def test_safe_filename(raw, safe):
    assert safe_filename(raw) == safe


def test_filename_with_nothing_left_is_refused():
    with pytest.raises(IngestError, match="no usable file name"):
        safe_filename("../..")
