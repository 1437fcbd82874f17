"""Parsing keeps pages and headings, and turns every kind of bad file into a message naming it."""

import sys

import pytest
import samples

from core.documents.errors import IngestError
from core.documents.parsing import ParseLimits, decode_text, display_name, parse_document, safe_filename


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


def test_html_nested_far_deeper_than_the_recursion_limit_is_read():
    depth = 5 * sys.getrecursionlimit()
    parsed = parse_document("deep.html", b"<html><body>" + b"<div>" * depth + b"Pumps need priming." + b"</div>" * depth)
    assert parsed.text == "Pumps need priming."


def test_utf8_cut_inside_its_last_character_keeps_its_encoding():
    data = "Grüße aus München: Pumpenhaus".encode() + "ö".encode()[:1]
    assert decode_text("cut.txt", data) == "Grüße aus München: Pumpenhaus"


def test_control_characters_and_nul_bytes_are_not_kept():
    parsed = parse_document("escapes.txt", b"\x1b[31mRed\x1b[0m alert\x07" + b"\n" * 9000 + b"NUL\x00 here")
    assert parsed.text == "[31mRed[0m alert\n\nNUL here"


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        ("report.pdf", b"PK\x03\x04" + bytes(64), "is named .pdf but its content is a ZIP archive"),
        ("report.docx", b"%PDF-1.7\n" + bytes(64), "is named .docx but its content is a PDF"),
        ("notes.md", b"\x89PNG\r\n\x1a\n" + bytes(64), "is named .md but its content is a PNG image"),
        ("report.pdf", b"Just some text, not a PDF at all.", "is named .pdf but its content is not a PDF"),
    ],
)
def test_content_that_does_not_match_the_extension_is_refused(filename, data, expected):
    with pytest.raises(IngestError, match=expected):
        parse_document(filename, data)


def test_a_csv_value_over_the_field_limit_is_refused_with_its_line():
    with pytest.raises(IngestError, match=r"has a value longer than 100 characters \(from line 3\)"):
        parse_document("parts.csv", b"a,b\n1,2\n3," + b"x" * 200 + b"\n", ParseLimits(max_csv_field_chars=100))


def test_a_long_name_keeps_its_extension_and_a_bad_one_is_shown_escaped():
    assert safe_filename("n" * 300 + ".pdf") == "n" * 196 + ".pdf"
    assert display_name("\x1b[2Jbad\x00name") == "\\x1b[2Jbad\\x00name"
    with pytest.raises(IngestError, match=r"^\\x07\\x1b: has no usable file name"):
        safe_filename("\x07\x1b")
