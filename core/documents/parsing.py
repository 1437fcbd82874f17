"""Parse an uploaded file into sections of text that keep their page (PDF) or heading (Markdown,
HTML, DOCX), so every chunk cut from a section can cite where it came from.

Each format has one small function; `parse_document` picks it by the file's extension and turns
every failure into an `IngestError` that names the file and says what to do.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from dataclasses import dataclass, field

from core.documents.errors import IngestError
from core.text import decode_bytes

# pypdf logs every repair it attempts; the user gets one clear message from us instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)

SUPPORTED_TYPES = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
}


@dataclass(frozen=True)
class Section:
    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class ParsedDocument:
    file_type: str
    sections: list[Section]
    pages: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The whole document as one string; chunk offsets point into it."""
        return SECTION_SEPARATOR.join(section.text for section in self.sections)


SECTION_SEPARATOR = "\n\n"


def safe_filename(name: str) -> str:
    """The name without folders, control characters or leading dots, safe to show and store."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".").strip()
    if not base:
        raise IngestError(name or "(no name)", "has no usable file name.", "Rename the file and upload it again.")
    if len(base) > 200:
        stem, dot, extension = base.rpartition(".")
        base = (stem[: 200 - len(extension) - 1] + dot + extension) if dot else base[:200]
    return base


def file_type_of(filename: str) -> str:
    extension = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in SUPPORTED_TYPES:
        supported = ", ".join(sorted({ext for ext in SUPPORTED_TYPES if len(ext) <= 5}))
        raise IngestError(
            filename,
            f"has an unsupported type ({extension or 'no extension'}).",
            f"Supported: {supported}. Convert the file to one of these and upload it again.",
        )
    return SUPPORTED_TYPES[extension]


def parse_document(filename: str, data: bytes) -> ParsedDocument:
    file_type = file_type_of(filename)
    if not data:
        raise IngestError(filename, "is empty (0 bytes).", "Check that the file was saved before uploading it.")
    parsed = _PARSERS[file_type](filename, data)
    parsed.sections = [s for s in parsed.sections if s.text.strip()]
    if not parsed.sections:
        raise IngestError(filename, "contains no text to index.", _NO_TEXT_ADVICE.get(file_type, ""))
    return parsed


_NO_TEXT_ADVICE = {
    "pdf": "It may be a scan made of images: run it through OCR first, then upload the result.",
}


# --- text and encodings -----------------------------------------------------------------------


def decode_text(filename: str, data: bytes) -> str:
    """Decode bytes in whatever encoding they were written in; refuse binaries named like text."""
    decoded = decode_bytes(data)
    if decoded is None:
        raise IngestError(
            filename,
            "is not readable text (it looks like a binary file with a text extension).",
            "Upload the original document (PDF, DOCX...) or export it as plain text.",
        )
    return decoded[0]


def _normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_text(filename: str, data: bytes) -> ParsedDocument:
    return ParsedDocument("text", [Section(_normalize_whitespace(decode_text(filename, data)))])


# --- Markdown ---------------------------------------------------------------------------------


def parse_markdown(filename: str, data: bytes) -> ParsedDocument:
    """One section per heading, named by its heading path ("Install > On Linux")."""
    from markdown_it import MarkdownIt

    source = decode_text(filename, data).replace("\r\n", "\n")
    lines = source.split("\n")
    tokens = MarkdownIt("commonmark").parse(source)
    headings = []  # (first line, line after the heading, level, title)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            headings.append((token.map[0], token.map[1], int(token.tag[1]), tokens[index + 1].content.strip()))

    # Text before the first heading, then one section per heading; a section's text starts below
    # its heading line(s), the heading itself is kept in Section.heading.
    sections = [Section("\n".join(lines[: headings[0][0] if headings else len(lines)]).strip())]
    path: list[tuple[int, str]] = []
    for number, (_, body_start, level, title) in enumerate(headings):
        body_end = headings[number + 1][0] if number + 1 < len(headings) else len(lines)
        path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        body = "\n".join(lines[body_start:body_end]).strip()
        sections.append(Section(body, heading=" > ".join(t for _, t in path)))
    return ParsedDocument("markdown", sections)


# --- HTML -------------------------------------------------------------------------------------

_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK_TAGS = set(_HEADING_TAGS) | {
    "p", "div", "li", "pre", "blockquote", "tr", "td", "th", "dt", "dd", "section", "article", "br", "table",
}
_SKIPPED_TAGS = {"script", "style", "noscript", "template", "head", "nav", "svg"}


def parse_html(filename: str, data: bytes) -> ParsedDocument:
    """Visible text split at h1-h6, each section named by its heading path."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(decode_text(filename, data), "lxml")
    for tag in soup.find_all(_SKIPPED_TAGS):
        tag.decompose()
    root = soup.body or soup

    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []

    def flush() -> None:
        text = _normalize_whitespace("".join(buffer))
        if text:
            sections.append(Section(text, heading=" > ".join(t for _, t in path) or None))
        buffer.clear()

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # skips comments, doctype, CDATA
                    buffer.append(str(child))
            elif isinstance(child, Tag):
                if child.name in _HEADING_TAGS:
                    flush()
                    level = int(child.name[1])
                    title = _normalize_whitespace(child.get_text(" "))
                    path[:] = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
                    continue
                block = child.name in _BLOCK_TAGS
                if block:
                    buffer.append("\n")
                walk(child)
                if block:
                    buffer.append("\n")

    walk(root)
    flush()
    return ParsedDocument("html", sections)


# --- PDF --------------------------------------------------------------------------------------


def parse_pdf(filename: str, data: bytes) -> ParsedDocument:
    """One section per page, numbered from 1 as a reader counts them."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestError(
                filename, "is password-protected.", "Remove the password (print or export to a new PDF) and upload it again."
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except IngestError:
        raise
    except (PdfReadError, ValueError, TypeError, KeyError, OSError, IndexError, AttributeError) as error:
        message = str(error)
        if "password" in message.lower() or "decrypt" in message.lower() or "crypt" in type(error).__name__.lower():
            raise IngestError(filename, "is encrypted and cannot be read.", "Remove the password and upload it again.") from error
        raise IngestError(
            filename,
            f"is not a readable PDF ({type(error).__name__}: {message[:200]}).",
            "The file may be damaged or only partly downloaded: open it in a PDF reader, save a new copy, and upload that.",
        ) from error
    sections = [Section(_normalize_whitespace(text), page=number) for number, text in enumerate(pages, start=1)]
    return ParsedDocument("pdf", sections, pages=len(pages))


# --- DOCX -------------------------------------------------------------------------------------


def parse_docx(filename: str, data: bytes) -> ParsedDocument:
    """Paragraphs and tables in reading order, split at Word's Heading styles."""
    import zipfile

    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise IngestError(
            filename,
            f"is not a readable Word document ({type(error).__name__}).",
            "Open it in Word or LibreOffice, save it again as .docx, and upload that copy.",
        ) from error

    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []

    def flush() -> None:
        text = _normalize_whitespace("\n".join(buffer))
        if text:
            sections.append(Section(text, heading=" > ".join(t for _, t in path) or None))
        buffer.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                buffer.append(" | ".join(cells))
            continue
        style = (block.style.name if block.style is not None else "") or ""
        match = re.match(r"(?:Heading|Title)\s*(\d*)", style)
        if match and block.text.strip():
            flush()
            level = int(match.group(1) or 1)
            title = block.text.strip()
            path[:] = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        else:
            buffer.append(block.text)
    flush()
    return ParsedDocument("docx", sections)


# --- CSV --------------------------------------------------------------------------------------


def parse_csv(filename: str, data: bytes) -> ParsedDocument:
    """Each data row becomes one line "column: value; column: value", so a chunk reads on its own."""
    text = decode_text(filename, data)
    try:
        dialect = csv.Sniffer().sniff(text[:10000], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise IngestError(filename, f"is not valid CSV ({error}).", "Check the quoting and export it again.") from error
    if not rows:
        raise IngestError(filename, "has no rows.", "Add a header row and at least one data row.")
    header, body = rows[0], rows[1:]
    if not body:
        raise IngestError(filename, "has a header row but no data rows.", "Add at least one data row.")
    names = [name.strip() or f"column {index + 1}" for index, name in enumerate(header)]
    lines = []
    for row in body:
        pairs = [f"{names[i] if i < len(names) else f'column {i + 1}'}: {cell.strip()}" for i, cell in enumerate(row)]
        lines.append("; ".join(pair for pair in pairs if not pair.endswith(": ")))
    return ParsedDocument("csv", [Section("\n".join(lines))], notes=[f"{len(body)} rows"])


_PARSERS = {
    "pdf": parse_pdf,
    "docx": parse_docx,
    "markdown": parse_markdown,
    "html": parse_html,
    "text": parse_text,
    "csv": parse_csv,
}
