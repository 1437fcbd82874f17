"""Hostile and broken files of every supported type, through the real ingestion into the real database.

Each file is either refused with a message that names it (safely) and says why, leaving the
database as it was, or parsed correctly; every parse stays within the time and memory limits the
sandbox enforces (core/documents/sandbox.py). All files are generated here at test time, into
memory or tmp_path: the repository keeps no binaries. benchmarks/hostile_files_bench.py runs the
same CASES and prints the count, the worst parse time and the worst peak memory; this module
prints the same summary at its end.
"""

from __future__ import annotations

import io
import struct
import sys
import tomllib
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import samples

from core.config import Settings
from core.documents.ingest import ingest_files, ingest_paths
from core.documents.library import document_chunks
from core.documents.parsing import display_name, safe_filename
from core.documents.sandbox import shared_sandbox

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


# --- builders: PDFs object by object, zips part by part, deflate streams that expand without end ---


def raw_pdf(objects: dict[int, bytes], root: int = 1) -> bytes:
    """A PDF from numbered object bodies, with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number] if number in offsets else b"0000000000 65535 f \n"
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, root, xref)
    return bytes(out)


def stream(content: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(content), extra) + content + b"\nendstream"


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
TEXT_CONTENT = b"BT /F1 12 Tf 72 720 Td (Pumps need priming before the first start.) Tj ET"


def page(parent: int, contents: int, resources: bytes = b"<< /Font << /F1 5 0 R >> >>") -> bytes:
    return b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R /Resources %s >>" % (
        parent, contents, resources)


def one_page_pdf(pages_node: bytes, content: bytes = TEXT_CONTENT, **more: bytes) -> bytes:
    """Catalog 1, page tree 2 (as given), page 3, content 4, font 5, and any more objects (n6=...)."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: pages_node, 3: page(2, 4), 4: content, 5: FONT}
    objects.update({int(key[1:]): value for key, value in more.items()})
    return raw_pdf(objects)


def many_pages_pdf(count: int) -> bytes:
    """`count` pages written by fpdf2, each with a line of text."""
    from fpdf import FPDF

    document = FPDF()
    document.set_font("helvetica", size=12)
    for number in range(count):
        document.add_page()
        document.cell(0, 10, f"Page {number + 1}: the pump manual goes on.")
    return bytes(document.output())


def pdf_with_deep_page_tree(depth: int) -> bytes:
    """Page-tree nodes each holding the next, `depth` levels down to one page of text."""
    objects = {1: b"<< /Type /Catalog /Pages 10 0 R >>", 4: stream(TEXT_CONTENT), 5: FONT}
    for level in range(depth):
        number, child = 10 + level, 10 + level + 1
        parent = b"" if level == 0 else b"/Parent %d 0 R " % (number - 1)
        objects[number] = b"<< /Type /Pages %s/Kids [%d 0 R] /Count 1 >>" % (parent, child)
    objects[10 + depth] = page(10 + depth - 1, 4)
    return raw_pdf(objects)


def pdf_with_many_objects(count: int) -> bytes:
    """One page, and `count` unused objects in the cross-reference table."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               3: page(2, 4), 4: stream(TEXT_CONTENT), 5: FONT}
    objects.update({number: b"(filler %d)" % number for number in range(6, 6 + count)})
    return raw_pdf(objects)


def deflate_bomb(expanded: int, segment: int = 16 * MB) -> bytes:
    """Raw deflate data that really expands to `expanded` zero bytes (a multiple of `segment`), built
    in milliseconds: one fully flushed segment repeated (each decodes on its own), then a final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(segment)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return piece * (expanded // segment) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


@dataclass(frozen=True)
class Part:
    name: str
    compressed: bytes
    size: int  # as the zip directory states it (may lie)
    crc: int = 0
    method: int = zipfile.ZIP_DEFLATED


def raw_zip(parts: list[Part]) -> bytes:
    """A zip written byte by byte, so a part's stated size and its data can disagree."""
    out, directory = bytearray(), bytearray()
    for part in parts:
        name = part.name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, part.method, 0, 0x21, part.crc, len(part.compressed), part.size)
        directory += struct.pack("<IH", 0x02014B50, 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, len(out))
        directory += name
        out += struct.pack("<I", 0x04034B50) + fields + struct.pack("<HH", len(name), 0) + name + part.compressed
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(parts), len(parts), len(directory), len(out), 0)
    return bytes(out + directory + end)


def docx_parts(replace: dict[str, bytes] | None = None) -> list[Part]:
    """The parts of a real Word document (samples.docx), some replaced by other content."""
    parts = []
    with zipfile.ZipFile(io.BytesIO(samples.docx())) as archive:
        for info in archive.infolist():
            data = (replace or {}).get(info.filename, archive.read(info))
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            parts.append(Part(info.filename, compressor.compress(data) + compressor.flush(), len(data), zlib.crc32(data)))
    return parts


def docx_with_document_xml(body: bytes, prolog: bytes = b"") -> bytes:
    namespace = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    xml = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + prolog + b"<w:document " + namespace + b"><w:body>"
    return raw_zip(docx_parts({"word/document.xml": xml + body + b"</w:body></w:document>"}))


def paragraph(text: bytes) -> bytes:
    return b"<w:p><w:r><w:t>" + text + b"</w:t></w:r></w:p>"


def docx_zip_bomb() -> bytes:
    """A part that really expands to 3.5 GB of zeros: the zip directory says so, and is refused on that alone."""
    expanded = 3584 * MB
    return raw_zip([*docx_parts(), Part("word/media/image1.png", deflate_bomb(expanded), expanded)])


def docx_ratio_bomb() -> bytes:
    """64 MB in 64 KB: within the total a file may expand to, but 1,000-fold."""
    return raw_zip([*docx_parts(), Part("word/media/image1.png", deflate_bomb(64 * MB), 64 * MB)])


def docx_understated_bomb(claimed: int | None = None) -> bytes:
    """document.xml's 1.5 MB of data expand to 1.5 GB but the directory claims `claimed` bytes (default:
    1 KB, a lie the directory gives away; just above the compressed size, one only the memory limit stops)."""
    parts = [part for part in docx_parts() if part.name != "word/document.xml"]
    data = deflate_bomb(1536 * MB)
    return raw_zip([*parts, Part("word/document.xml", data, 1024 if claimed is None else len(data) + claimed)])


def docx_with_many_parts(count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        with zipfile.ZipFile(io.BytesIO(samples.docx())) as original:
            for info in original.infolist():
                archive.writestr(info, original.read(info))
        for number in range(count):
            archive.writestr(f"extra/part{number}.xml", b"<a/>")
    return out.getvalue()


def zip_of_text_files() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", "Pumps need priming.")
    return out.getvalue()


OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def office_encrypted_docx() -> bytes:
    """What Word writes for a password-protected .docx: an OLE2 container with an EncryptedPackage stream."""
    return OLE_HEADER + bytes(504) + "EncryptedPackage".encode("utf-16-le") + bytes(4096)


def billion_laughs() -> bytes:
    entities = b'<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (level, (b"&lol%s;" % (b"" if level == 1 else b"%d" % (level - 1))) * 10)
        for level in range(1, 10))
    return b"<!DOCTYPE lolz [" + entities + b"]>"


def nested_html(depth: int) -> bytes:
    return b"<html><body><h1>Deep</h1>" + b"<div>" * depth + b"Pumps need priming." + b"</div>" * depth + b"</body></html>"


def text_with_nul_bytes_late() -> bytes:
    """NUL bytes after the first 8 KB (which are mostly blank lines, so little text is embedded): the
    text decodes as UTF-8, and Postgres would refuse to store them."""
    return b"Pumps need priming before the first start.\n" + b"\n" * 8200 + b"\x00\x00valves\x00 close slowly."


def pdf_with_nul_and_binary() -> bytes:
    return b"%PDF-1.7\n" + bytes(range(256)) * 64


def elf_binary() -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 16


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def csv_with_giant_field() -> bytes:
    return b"part,description\nP-1," + b"x" * (2 * MB) + b"\nP-2,seal\n"


def csv_with_unclosed_quote() -> bytes:
    return b'part,description\nP-1,"Impeller for pump A\n' + b"P-2,Mechanical seal kit\n" * 80_000


def markdown_nested(prefix: bytes, depth: int) -> bytes:
    return b"# Nesting\n\n" + prefix * depth + b"Pumps need priming.\n"


def markdown_nested_lists(depth: int) -> bytes:
    return b"# Lists\n\n" + b"".join(b"  " * level + b"- item %d\n" % level for level in range(depth))


# --- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    filename: str
    make: Callable[[], bytes]
    refused: str | None  # a phrase the refusal must contain; None: the file must be added
    expected_text: str | None = None  # added: a phrase the stored chunks must contain
    absent_text: str | None = None  # added: a phrase they must not contain

    @property
    def shown(self) -> str:
        """The name the outcome's message must start with: the stored name, or an escaped one."""
        try:
            return safe_filename(self.filename)
        except ValueError:
            return display_name(self.filename)


PUMPS = "Pumps need priming"
CASES = [
    # PDF
    Case("manual-5000-pages.pdf", lambda: many_pages_pdf(5000), "has 5,000 pages; at most 2,000"),
    Case("locked.pdf", lambda: samples.encrypted_pdf(["Secret plans."]), "is encrypted (password-protected)"),
    Case("owner-locked.pdf", lambda: samples.encrypted_pdf(["Open to read, locked to edit."], password=""), None,
         "Open to read"),
    Case("scan.pdf", samples.image_only_pdf, "no extractable text"),
    Case("half-downloaded.pdf", lambda: truncated(samples.pdf(["Pumps move water."] * 3)), "is not a readable PDF"),
    Case("cyclic-page-tree.pdf", lambda: one_page_pdf(b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>", stream(TEXT_CONTENT)),
         "is not a readable PDF (PdfReadError: Detected cyclic page references"),
    Case("deep-page-tree.pdf", lambda: pdf_with_deep_page_tree(5000), "goes past a safety limit of the PDF reader"),
    Case("lying-page-count.pdf", lambda: one_page_pdf(b"<< /Type /Pages /Kids [3 0 R] /Count 999999999 >>",
                                                      stream(TEXT_CONTENT)), None, PUMPS),
    Case("self-drawing-form.pdf", lambda: one_page_pdf(
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", stream(b"/X0 Do " + TEXT_CONTENT),
        n6=stream(b"/X0 Do", b"/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /X0 6 0 R >> >>")
    ).replace(b"/Resources << /Font << /F1 5 0 R >> >>", b"/Resources << /Font << /F1 5 0 R >> /XObject << /X0 6 0 R >> >>"),
         None, PUMPS),
    Case("nested-arrays.pdf", lambda: one_page_pdf(b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Deep " + b"[" * 100_000
                                                   + b"]" * 100_000 + b" >>", stream(TEXT_CONTENT)), "is not a readable PDF"),
    Case("flate-bomb.pdf", lambda: one_page_pdf(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", stream(
        zlib.compress(TEXT_CONTENT + b" " * (300 * MB), 1), b"/Filter /FlateDecode")), "goes past a safety limit"),
    Case("many-objects.pdf", lambda: pdf_with_many_objects(100_000), None, PUMPS),
    Case("word-file.pdf", samples.docx, "is named .pdf but its content is a ZIP archive"),
    Case("garbage.pdf", pdf_with_nul_and_binary, "is not a readable PDF"),
    # DOCX
    Case("zip-bomb.docx", docx_zip_bomb, "is a zip whose parts expand to 3.5 GB"),
    Case("ratio-bomb.docx", docx_ratio_bomb, "expands 1,0"),
    Case("understated-bomb.docx", docx_understated_bomb, "the zip directory lies"),
    Case("plausible-lie-bomb.docx", lambda: docx_understated_bomb(claimed=4096), "needed more than 1 GB of memory"),
    Case("many-parts.docx", lambda: docx_with_many_parts(20_000), "is a zip of 20,0"),
    Case("billion-laughs.docx", lambda: docx_with_document_xml(paragraph(b"Pumps need priming &lol9;."), billion_laughs()),
         "is not a readable Word document"),
    Case("deep-xml.docx", lambda: docx_with_document_xml(b"<w:sdt>" * 100_000 + b"</w:sdt>" * 100_000),
         "is not a readable Word document"),
    Case("half-downloaded.docx", lambda: truncated(samples.docx()), "is not a readable Word document"),
    Case("old-word.docx", lambda: OLE_HEADER + bytes(4096), "is named .docx but its content is an old-style Office file"),
    Case("password.docx", office_encrypted_docx, "is encrypted (password-protected)"),
    Case("a-pdf.docx", lambda: samples.pdf(["Pumps."]), "is named .docx but its content is a PDF"),
    Case("archive.docx", zip_of_text_files, "is a ZIP archive but not a Word document"),
    # HTML
    Case("deep.html", lambda: nested_html(50_000), None, PUMPS),
    Case("entities.html", lambda: billion_laughs() + b"<html><body><p>Pumps need priming &lol9;.</p></body></html>", None,
         PUMPS, "lollol"),
    Case("huge-attribute.html", lambda: b'<html><body><p title="' + b"a" * (5 * MB) + b'">Pumps need priming.</p></body></html>',
         None, PUMPS, "aaaa"),
    Case("unclosed-tags.html", lambda: b"<html><body>" + b"<p><b><i><span>" * 10_000 + b"Pumps need priming.", None, PUMPS),
    Case("nul-bytes.html", lambda: b"<html><body><p>" + text_with_nul_bytes_late() + b"</p></body></html>", None,
         "valves close slowly"),
    Case("picture.html", lambda: b"\x89PNG\r\n\x1a\n" + bytes(64), "is named .html but its content is a PNG image"),
    # Markdown
    Case("deep-quotes.md", lambda: markdown_nested(b">", 2_000), None, PUMPS),
    Case("deep-lists.md", lambda: markdown_nested_lists(60), None, "item 59"),
    Case("nul-bytes.md", text_with_nul_bytes_late, None, "valves close slowly"),
    Case("archive.md", lambda: b"\x1f\x8b\x08\x00" + bytes(64), "its content is a gzip archive"),
    # Text
    Case("empty.txt", lambda: b"", "is empty (0 bytes)"),
    Case("program.txt", elf_binary, "is named .txt but its content is a program"),
    Case("random.txt", lambda: bytes(range(256)) * 40, "is not readable text"),
    Case("cut-short.txt", lambda: "Grüße aus München, Pumpenhaus".encode()[:-1] + "ö".encode()[:1], None, "Grüße aus München"),
    Case("controls-only.txt", lambda: b"\x1b\x1b \t\n\r\n\f\x7f" * 10, "contains no text to index"),
    Case("escapes.txt", lambda: b"\x1b[2J\x1b]0;owned\x07Pumps need priming.", None, PUMPS, "\x1b"),
    # CSV
    Case("giant-field.csv", csv_with_giant_field, "has a value longer than 1,048,576 characters"),
    Case("unclosed-quote.csv", csv_with_unclosed_quote, "has a value longer than 1,048,576 characters"),
    Case("nul-bytes-early.csv", lambda: b"part,description\nP-1,Impeller\x00 for pump A\n", "is not readable text"),
    Case("nul-bytes-late.csv", lambda: b"part,description\n" + b"\n" * 8200 + b"P-2,Seal\x00 kit\n", None,
         "description: Seal kit"),
    Case("wide.csv", lambda: (",".join(f"c{i}" for i in range(5000)) + "\n" + ",".join("" for _ in range(4999)) + ",last\n").encode(),
         None, "c4999: last"),
    Case("spreadsheet.csv", docx_zip_bomb, "is named .csv but its content is a ZIP archive"),
    # Names
    Case("../../etc/cron.d/notes.txt", lambda: b"Harmless notes about pumps.", None, "Harmless notes"),
    Case("\x1b[31mred\x1b[0m\n.txt", lambda: b"Terminal escapes in the name.", None, "Terminal escapes"),
    Case("report\u202egpj.md", lambda: b"Right-to-left override in the name.", None, "Right-to-left override"),
    Case("n" * 300 + ".md", lambda: b"A name of three hundred characters.", None, "three hundred"),
    Case("../..", lambda: b"No name left.", "has no usable file name"),
    Case("\x07\x00../\x1b", lambda: b"Only control characters.", "has no usable file name"),
]


# --- the suite --------------------------------------------------------------------------------

_results: list[tuple[str, str, float | None, int | None]] = []  # (shown name, outcome, parse seconds, peak RSS)


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Each parse's peak memory measured; at the end of the module: how many hostile files, and the
    worst parse time and memory."""
    shared_sandbox().measure_memory = True
    yield
    shared_sandbox().measure_memory = False
    if not _results:
        return
    lines = summary_lines(_results)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stdout.write("\n" + "\n".join(lines) + "\n")


def summary_lines(results) -> list[str]:
    timed = [r for r in results if r[2] is not None]
    measured = [r for r in results if r[3] is not None]
    slowest = max(timed, key=lambda r: r[2], default=None)
    biggest = max(measured, key=lambda r: r[3], default=None)
    refused = sum(outcome == "refused" for _, outcome, _, _ in results)
    lines = [f"hostile files: {len(results)} ({refused} refused, {len(results) - refused} added)"]
    if slowest:
        lines.append(f"  worst parse time: {slowest[2]:.2f} s ({slowest[0]!r})")
    if biggest:
        lines.append(f"  worst peak memory of the parser process: {biggest[3] / MB:.0f} MB ({biggest[0]!r})")
    return lines


def test_there_are_at_least_30_cases_across_every_supported_type():
    from core.documents.parsing import SUPPORTED_TYPES

    assert len(CASES) >= 30
    extensions = {"." + case.filename.rsplit(".", 1)[-1] for case in CASES if "." in case.filename}
    assert set(SUPPORTED_TYPES.values()) == {SUPPORTED_TYPES[e] for e in extensions if e in SUPPORTED_TYPES}


@pytest.mark.parametrize("case", CASES, ids=[display_name(case.filename)[:40] for case in CASES])
def test_hostile_file_is_refused_by_name_or_parsed_within_limits(db, collection, counts, settings, case):
    data = case.make()
    sandbox = shared_sandbox()
    sandbox.last = None
    before = counts()
    (outcome,) = ingest_files(db, collection, [(case.filename, data)], settings=settings)
    stats = sandbox.last
    _results.append((case.shown, "refused" if outcome.status == "failed" else "added",
                     stats.seconds if stats else None, stats.peak_rss_bytes if stats else None))

    assert outcome.message.startswith(f"{case.shown}: "), outcome.message
    assert outcome.message.isprintable(), outcome.message
    if case.refused:
        assert outcome.status == "failed", outcome.message
        assert case.refused in outcome.message
        assert counts() == before
    else:
        assert outcome.status == "added", outcome.message
        text = "\n".join(chunk.text for chunk in document_chunks(db, outcome.document_id, limit=100_000))
        assert case.expected_text in text
        assert "\x00" not in text
        if case.absent_text:
            assert case.absent_text not in text
        assert counts() == (before[0] + 1, before[1] + outcome.chunks)
    # Bounded: what the sandbox enforces, with room for a loaded machine; the limits have tests of their own below.
    if stats is not None:
        assert stats.seconds < settings.parse_timeout_s + 30
        if stats.peak_rss_bytes is not None:
            assert stats.peak_rss_bytes < (settings.parse_memory_mb + 512) * MB


def test_a_parse_past_the_time_limit_is_stopped_and_the_next_file_is_read(db, collection, counts, settings):
    """Extracting 5,000 pages takes seconds on any machine; the limit here is a fifth of a second."""
    impatient = settings.model_copy(update={"parse_timeout_s": 0.2, "max_pdf_pages": 10_000})
    before = counts()
    outcomes = ingest_files(db, collection, [("slow.pdf", many_pages_pdf(5000)), ("memo.txt", b"Pumps need priming.")],
                            settings=impatient)
    assert [o.status for o in outcomes] == ["failed", "added"]
    assert outcomes[0].message.startswith("slow.pdf: took longer than 0.2 s to read")
    assert counts() == (before[0] + 1, before[1] + outcomes[1].chunks)


def test_a_parse_past_the_memory_limit_is_stopped_and_the_next_file_is_read(db, collection, counts, settings):
    frugal = settings.model_copy(update={"parse_memory_mb": 64})
    before = counts()
    big_text = b"Pumps need priming before the first start.\n" * 1_000_000  # 44 MB: decoding alone needs as much again
    outcomes = ingest_files(db, collection, [("big.txt", big_text), ("memo.txt", b"Valves close slowly.")], settings=frugal)
    assert [o.status for o in outcomes] == ["failed", "added"]
    assert outcomes[0].message.startswith("big.txt: needed more than 64 MB of memory to read")
    assert counts() == (before[0] + 1, before[1] + outcomes[1].chunks)


def test_a_file_on_disk_is_refused_by_its_size_before_it_is_read(db, collection, counts, settings, tmp_path):
    """A sparse 100 GB file: reading it would take minutes and all memory; stat() takes microseconds."""
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as file:
        file.truncate(100 * 1024 * MB)
    (tmp_path / "small.txt").write_bytes(b"Pumps need priming.")
    before = counts()
    outcomes = ingest_paths(db, collection, [huge, tmp_path / "small.txt"], settings=settings)
    assert [o.status for o in outcomes] == ["failed", "added"]
    assert outcomes[0].message.startswith("huge.txt: is 102400.0 MB, over the 50 MB limit.")
    assert counts() == (before[0] + 1, before[1] + outcomes[1].chunks)


def test_the_cli_refuses_an_oversized_file_by_name(db, collection, settings, tmp_path, capsys):
    from core.cli import main

    huge = tmp_path / "huge.pdf"
    with huge.open("wb") as file:
        file.truncate(51 * MB)
    assert main(["ingest", str(huge), "--collection", collection]) == 1
    assert "huge.pdf: is 51.0 MB, over the 50 MB limit." in capsys.readouterr().err


def test_streamlits_upload_limit_equals_the_apps():
    """Streamlit refuses bigger uploads itself, with its own message; ours is the one that names the
    setting. Raise both together: EXPERT_STUDIO_MAX_UPLOAD_MB=200 and STREAMLIT_SERVER_MAX_UPLOAD_SIZE=200
    (or maxUploadSize in .streamlit/config.toml); both count megabytes of 1024 * 1024 bytes."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == Settings.model_fields["max_upload_mb"].default


# --- training data and exam files: refused by size before they are read -----------------------


def test_a_training_file_over_the_limit_is_refused_before_it_is_read(tmp_path, settings):
    from core.datasets import DatasetError
    from core.datasets.files import read_file, read_records

    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as file:
        file.truncate(100 * 1024 * MB)
    with pytest.raises(DatasetError, match=r"^huge.jsonl is 100.0 GB; training files are at most 50.0 MB\."):
        read_file(huge)
    with pytest.raises(DatasetError, match=r"^big.jsonl is 2.1 KB; training files are at most 1.0 KB\."):
        read_records("big.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 60, max_bytes=1024)


def test_an_exam_file_over_the_limit_is_refused_before_it_is_read(db, tmp_path):
    from core.documents.library import ensure_collection
    from core.evaluation.exams import ExamError, preview_exam_file

    ensure_collection(db, "exam-limits")
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as file:
        file.truncate(100 * 1024 * MB)
    with pytest.raises(ExamError, match=r"^huge.csv is 100.0 GB; exam files are at most 20.0 MB\."):
        preview_exam_file(db, huge, collection="exam-limits")


# --- the Documents page: each refusal with the file's name and the reason ---------------------


def test_the_documents_page_shows_each_refusal_with_the_files_name_and_reason(settings, db):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()  # the app's cached Database must follow this module's settings
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/documents.py").run()
    assert not at.exception
    at.file_uploader[0].set_value([
        ("zip bomb.docx", docx_zip_bomb(), "application/octet-stream"),
        ("locked.pdf", samples.encrypted_pdf(["Secret plans."]), "application/pdf"),
        ("a pdf.docx", samples.pdf(["Pumps."]), "application/octet-stream"),
        ("pump notes.md", samples.MARKDOWN, "text/markdown"),
    ])
    at.button(key="add_documents").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert [e.split(":")[0] for e in errors] == ["zip bomb.docx", "locked.pdf", "a pdf.docx"]
    assert "is a zip whose parts expand to 3.5 GB" in errors[0]
    assert "is encrypted (password-protected)" in errors[1] and "Remove the password" in errors[1]
    assert "is named .docx but its content is a PDF" in errors[2]
    assert [s.value for s in at.success] == ["pump notes.md: added, 3 chunks."]
