"""Parse an uploaded file into sections of text that keep their page (PDF) or heading (Markdown,
HTML, DOCX), so every chunk cut from a section can cite where it came from.

Each format has one small function; `parse_document` picks it by the file's extension and turns
every failure into an `IngestError` that names the file and says what to do.

Files come from anywhere, so each parser is also written against hostile input: cheap checks
before the expensive parse (content that does not match the extension, a DOCX whose zip
directory promises gigabytes, a PDF with thousands of pages, a CSV field that swallows the file),
no recursion over the document's own nesting, and text cleaned of what Postgres cannot store.
What no check can foresee (a parse that never ends or eats all memory) is bounded by running
`parse_document` in a child process: core/documents/sandbox.py.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field

from core.documents.errors import IngestError
from core.formatting import human_size
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


@dataclass(frozen=True)
class ParseLimits:
    """What one file may ask of the parser before it is refused (settings: `ParseLimits.of`)."""

    max_pages: int = 2000  # PDF pages read per file
    max_unzipped_bytes: int = 2**30  # what a DOCX's parts may expand to, per its zip directory
    max_zip_ratio: int = 200  # a part that expands more than this many times (and past 10 MB) is a zip bomb
    max_zip_parts: int = 10_000  # a Word document has tens of parts, hundreds with many images
    max_csv_field_chars: int = 2**20  # one CSV cell; a quote that is never closed makes the rest of the file one cell

    @classmethod
    def of(cls, settings) -> ParseLimits:
        """The limits a `core.config.Settings` asks for: a DOCX may expand to what a parse may use."""
        return cls(max_pages=settings.max_pdf_pages, max_unzipped_bytes=int(settings.parse_memory_mb * 2**20))


def megabytes(mb: float) -> str:
    """A limit in MB as people write it: "50 MB", "1 GB", "1.5 GB"."""
    return f"{mb / 1024:g} GB" if mb >= 1024 else f"{mb:g} MB"


def display_name(name: str) -> str:
    """A name fit for a message, whatever it holds: control characters escaped, at most 80 characters."""
    shown = "".join(ch if unicodedata.category(ch)[0] != "C" else ascii(ch)[1:-1] for ch in name or "")
    return shown if len(shown) <= 80 else shown[:60] + "…" + shown[-19:]


def safe_filename(name: str) -> str:
    """The name without folders, control characters or leading dots, safe to show and store."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".").strip()
    if not base:
        raise IngestError(
            display_name(name) or "(no name)", "has no usable file name.", "Rename the file and upload it again."
        )
    if len(base) > 200:
        stem, dot, extension = base.rpartition(".")
        base = (stem[: 200 - len(extension) - 1] + dot + extension) if dot and len(extension) <= 10 else base[:200]
    return base


def file_type_of(filename: str) -> str:
    extension = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in SUPPORTED_TYPES:
        supported = ", ".join(sorted({ext for ext in SUPPORTED_TYPES if len(ext) <= 5}))
        raise IngestError(
            filename,
            f"has an unsupported type ({display_name(extension[:20]) or 'no extension'}).",
            f"Supported: {supported}. Convert the file to one of these and upload it again.",
        )
    return SUPPORTED_TYPES[extension]


def parse_document(filename: str, data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    """The file's sections; IngestError naming the file for anything that cannot be indexed.

    In the app this runs inside the sandbox (`core.documents.sandbox.parse_untrusted`), which adds
    the time and memory limits no parser can enforce on itself."""
    limits = limits or ParseLimits()
    file_type = file_type_of(filename)
    if not data:
        raise IngestError(filename, "is empty (0 bytes).", "Check that the file was saved before uploading it.")
    check_content_matches(filename, file_type, data)
    try:
        parsed = _PARSERS[file_type](filename, data, limits)
    except RecursionError:
        raise IngestError(
            filename,
            "is nested too deeply to read (elements inside elements, thousands of levels down).",
            "Export it again from the application that made it, or save it as plain text.",
        ) from None
    parsed.sections = [cleaned for s in parsed.sections if (cleaned := _storable(s)).text.strip()]
    if not parsed.sections:
        problem, advice = _NO_TEXT.get(file_type, _NO_TEXT[None])
        raise IngestError(filename, problem, advice)
    return parsed


_NO_TEXT = {
    None: ("contains no text to index.", ""),
    "pdf": (
        "has no extractable text: its pages look like scanned images.",
        "Run it through OCR first (e.g. ocrmypdf, or your scanner's 'searchable PDF' option), then upload the result.",
    ),
}


def _storable(section: Section) -> Section:
    """Text fit to store and to show: Postgres cannot store NUL nor unpaired surrogates (some PDFs'
    text has them), and other control characters (a terminal's escape sequences) mean nothing to
    a reader or to retrieval but can rewrite a terminal that prints a passage."""

    def clean(text: str) -> str:
        text = _CONTROL.sub("", text)
        return text.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(text) else text

    heading = clean(section.heading) if section.heading else section.heading
    return Section(clean(section.text), section.page, heading)


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # all but tab, line feed, form feed, carriage return


# --- does the content match the extension? ---------------------------------------------------

# Leading bytes of formats people upload by mistake (or on purpose) under another extension.
_SIGNATURES = (
    (b"%PDF-", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (DOCX, XLSX, ODT and others are ZIP archives)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Office file (.doc, .xls) or a password-protected Office document"),
    (b"{\\rtf", "an RTF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a program (ELF)"),
)
_ENCRYPTED_OFFICE = "EncryptedPackage".encode("utf-16-le")


def sniff(data: bytes) -> str | None:
    """What the bytes look like, by the signature they start with ("a PDF", "a PNG image"), or None."""
    return next((kind for signature, kind in _SIGNATURES if data.startswith(signature)), None)


def check_content_matches(filename: str, file_type: str, data: bytes) -> None:
    """Refuse a file whose content is another format than its extension says, before parsing it as that."""
    if file_type == "pdf" and b"%PDF-" in data[:1024]:  # readers accept the header anywhere in the first kilobyte
        return
    kind = sniff(data)
    if file_type == "docx" and kind == "a ZIP archive (DOCX, XLSX, ODT and others are ZIP archives)":
        return
    if file_type == "docx" and kind and kind.startswith("an old-style Office") and _ENCRYPTED_OFFICE in data:
        raise IngestError(
            filename,
            "is encrypted (password-protected).",
            "Remove the password: open it in Word, save a copy without a password, and upload that.",
        )
    if file_type not in ("pdf", "docx") and kind is None:
        return  # text formats: whether the bytes are text is decided when they are decoded
    extension = display_name(filename.rsplit(".", 1)[-1])
    expected = {"pdf": "a PDF", "docx": "a Word document"}.get(file_type, "text")
    raise IngestError(
        filename,
        f"is named .{extension} but its content is {kind or 'not ' + expected}.",
        "Give the file the extension of what it really is, or export it again from the application that made it.",
    )


# --- text and encodings -----------------------------------------------------------------------


def decode_text(filename: str, data: bytes) -> str:
    """Decode bytes in whatever encoding they were written in; refuse binaries named like text."""
    text = _utf8_cut_short(data)
    if text is None:
        decoded = decode_bytes(data)
        if decoded is None:
            raise IngestError(
                filename,
                "is not readable text (it looks like a binary file with a text extension).",
                "Upload the original document (PDF, DOCX...) or export it as plain text.",
            )
        text = decoded[0]
    return _CONTROL.sub("", text)  # before whitespace is normalized, so none is left where they were


def _utf8_cut_short(data: bytes) -> str | None:
    """UTF-8 whose last character was cut in half (a truncated download or copy): the text before it.

    Without this, the one broken character at the end makes the whole file fail as UTF-8 and the
    encoding detector reads it in some legacy code page, garbling every accented letter."""
    if b"\x00" in data[:8192]:
        return None
    try:
        data.decode("utf-8")
        return None  # whole UTF-8: decode_bytes reads it the usual way
    except UnicodeDecodeError as error:
        cut = error.start if error.reason == "unexpected end of data" and error.start >= len(data) - 3 else None
    if cut is None:
        return None
    try:
        return data[:cut].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_text(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    return ParsedDocument("text", [Section(_normalize_whitespace(decode_text(filename, data)))])


# --- Markdown ---------------------------------------------------------------------------------


def parse_markdown(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """One section per heading, named by its heading path ("Install > On Linux").

    markdown-it stops nesting blocks at its `maxNesting` (20 in the commonmark preset), so a file of
    ">>>>>>..." or lists a thousand levels deep is read as text, not as a thousand levels."""
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
_BLOCK_END = object()  # marks, on the walk's stack, where a block element's children end


def parse_html(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Visible text split at h1-h6, each section named by its heading path.

    The tree is walked with a stack, not by recursion: lxml builds HTML nested 100,000 levels deep
    without complaint, and a recursive walk would die at Python's recursion limit."""
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

    stack: list = list(reversed(root.contents))
    while stack:
        node = stack.pop()
        if node is _BLOCK_END:
            buffer.append("\n")
        elif isinstance(node, NavigableString):
            if type(node) is NavigableString:  # skips comments, doctype, CDATA
                buffer.append(str(node))
        elif isinstance(node, Tag):
            if node.name in _HEADING_TAGS:
                flush()
                level = int(node.name[1])
                title = _normalize_whitespace(node.get_text(" "))
                path[:] = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
                continue
            block = node.name in _BLOCK_TAGS
            if block:
                buffer.append("\n")
                stack.append(_BLOCK_END)
            stack.extend(reversed(node.contents))
    flush()
    return ParsedDocument("html", sections)


# --- PDF --------------------------------------------------------------------------------------


def parse_pdf(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """One section per page, numbered from 1 as a reader counts them.

    pypdf itself caps what a stream may decompress to and walks the page tree without recursion,
    noticing cycles; the page limit is checked before any page's text is extracted."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _encrypted_pdf(filename)
        count = len(reader.pages)
        if count > limits.max_pages:
            raise IngestError(
                filename,
                f"has {count:,} pages; at most {limits.max_pages:,} are read from one file.",
                "Split it into parts (by chapter, say) and upload those, or raise EXPERT_STUDIO_MAX_PDF_PAGES.",
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except IngestError:
        raise
    except (FileNotDecryptedError, DependencyError) as error:
        raise _encrypted_pdf(filename, error) from error
    except LimitReachedError as error:  # a stream that inflates past 75 MB, a page tree thousands of levels deep...
        raise IngestError(
            filename,
            f"goes past a safety limit of the PDF reader ({str(error)[:200]}).",
            "A genuine PDF rarely does: print or export it to a new PDF and upload that.",
        ) from error
    except RecursionError:
        raise
    except (PyPdfError, ValueError, TypeError, KeyError, OSError, IndexError, AttributeError, LookupError) as error:
        message = str(error)
        if "password" in message.lower() or "decrypt" in message.lower() or "crypt" in type(error).__name__.lower():
            raise _encrypted_pdf(filename, error) from error
        raise IngestError(
            filename,
            f"is not a readable PDF ({type(error).__name__}: {message[:200]}).",
            "The file may be damaged or only partly downloaded: open it in a PDF reader, save a new copy, and upload that.",
        ) from error
    sections = [Section(_normalize_whitespace(text), page=number) for number, text in enumerate(pages, start=1)]
    return ParsedDocument("pdf", sections, pages=len(pages))


def _encrypted_pdf(filename: str, error: Exception | None = None) -> IngestError:
    needs = " (reading it would need the Python package 'cryptography')" if "cryptography" in str(error or "") else ""
    return IngestError(
        filename,
        f"is encrypted (password-protected){needs}.",
        "Remove the password: open it with the password, print or export it to a new PDF, and upload that.",
    )


# --- DOCX -------------------------------------------------------------------------------------


def check_zip(filename: str, data: bytes, limits: ParseLimits) -> None:
    """Refuse a zip bomb from its directory alone, before a single part is decompressed.

    The directory may also understate a part. Compressed data larger than the size it claims to
    expand to gives such a lie away (deflate adds at most a few bytes per 64 KB to data it cannot
    compress). A subtler lie (a claim just above the compressed size) is not visible here: Python's
    zipfile inflates the whole part before it cuts it to the claimed size, and the sandbox's memory
    limit is what stops that one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise _unreadable_docx(filename, error) from error
    if len(parts) > limits.max_zip_parts:
        raise IngestError(
            filename,
            f"is a zip of {len(parts):,} parts; a Word document has at most {limits.max_zip_parts:,}.",
            "It is not a normal Word document: open it in Word or LibreOffice and save it again as .docx.",
        )
    total = sum(part.file_size for part in parts)
    if total > limits.max_unzipped_bytes:
        raise IngestError(
            filename,
            f"is a zip whose parts expand to {human_size(total)}, more than the "
            f"{megabytes(limits.max_unzipped_bytes / 2**20)} a file may use while it is read.",
            "Remove large embedded files (videos, images) and save it again, or split the document.",
        )
    for part in parts:
        if part.compress_size > part.file_size * 1.001 + 1024:
            raise IngestError(
                filename,
                f"has a part ({display_name(part.filename)}) whose {human_size(part.compress_size)} of compressed data "
                f"claim to expand to only {human_size(part.file_size)}: the zip directory lies, as disguised zip bombs' do.",
                "If the document is genuine, open it in Word or LibreOffice and save it again.",
            )
        ratio = part.file_size / max(part.compress_size, 1)
        if part.file_size > 10 * 2**20 and ratio > limits.max_zip_ratio:
            raise IngestError(
                filename,
                f"has a part ({display_name(part.filename)}) that expands {ratio:,.0f}-fold to {human_size(part.file_size)}, "
                "as zip bombs do.",
                "If the document is genuine, open it in Word or LibreOffice and save it again.",
            )
    if "[Content_Types].xml" not in {part.filename for part in parts}:
        raise IngestError(
            filename,
            "is a ZIP archive but not a Word document (it has no [Content_Types].xml).",
            "Unpack it and upload the documents inside, or export the document again as .docx.",
        )


def _unreadable_docx(filename: str, error: Exception) -> IngestError:
    return IngestError(
        filename,
        f"is not a readable Word document ({type(error).__name__}: {str(error)[:200]}).",
        "It may be damaged or only partly downloaded: open it in Word or LibreOffice, save it again as .docx, "
        "and upload that copy.",
    )


def parse_docx(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Paragraphs and tables in reading order, split at Word's Heading styles.

    python-docx parses XML with entity expansion off, so a "billion laughs" in a part stays small;
    libxml2 refuses XML nested past 256 levels (lxml's default without huge_tree)."""
    import docx
    from docx.table import Table
    from lxml.etree import LxmlError

    check_zip(filename, data, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError, LxmlError, EOFError, OSError) as error:
        raise _unreadable_docx(filename, error) from error

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


def parse_csv(filename: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Each data row becomes one line "column: value; column: value", so a chunk reads on its own."""
    text = decode_text(filename, data)
    try:
        dialect = csv.Sniffer().sniff(text[:10000], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    # The limit is process-wide; set it for this parse (core.datasets raises it for its own files).
    csv.field_size_limit(limits.max_csv_field_chars)
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as error:
        if "field larger than field limit" in str(error):
            raise IngestError(
                filename,
                f"has a value longer than {limits.max_csv_field_chars:,} characters (from line {reader.line_num}).",
                "Usually a quote (\") that is never closed swallows the rest of the file: check the quoting and "
                "export it again.",
            ) from error
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
