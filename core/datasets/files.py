"""Bytes of an uploaded training file to records: decoded (UTF-8, else the encoding
charset-normalizer recognizes), typed (JSON Lines, one JSON array, or CSV), and split into rows
that each remember the line an editor shows for them, so every problem can name its line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.config import get_settings
from core.datasets.errors import DatasetError
from core.formatting import human_size
from core.text import decode_bytes

FileType = Literal["jsonl", "json", "csv"]
FILE_TYPE_LABELS: dict[str, str] = {"jsonl": "JSON Lines", "json": "a JSON array", "csv": "CSV"}


@dataclass(frozen=True)
class Record:
    row: int  # the line an editor shows: JSON Lines line, or CSV line with the header as line 1
    fields: dict | None  # keys lower-cased; None when the row could not even be read
    problem: str | None = None


def read_records(
    filename: str, data: bytes, *, max_bytes: int | None = None
) -> tuple[FileType, str, list[str], list[Record]]:
    """(file type, encoding, column names in order of appearance, records); raises DatasetError for
    a file that is unusable as a whole, first of all one over `max_bytes` (default: the upload limit,
    EXPERT_STUDIO_MAX_UPLOAD_MB)."""
    check_size(filename, len(data), max_bytes)
    text, encoding = decode(filename, data)
    file_type = file_type_of(filename, text)
    columns, records = _READERS[file_type](filename, text)
    if not records:
        raise DatasetError(f"{filename} has no rows to import.")
    return file_type, encoding, columns, records


# --- bytes to text ----------------------------------------------------------------------------


def upload_limit_bytes() -> int:
    """The largest training file accepted: the same limit as documents (EXPERT_STUDIO_MAX_UPLOAD_MB)."""
    return int(get_settings().max_upload_mb * 2**20)


_SPLIT = "Split it into smaller files, or raise EXPERT_STUDIO_MAX_UPLOAD_MB."


def check_size(filename: str, size: int, max_bytes: int | None = None, kind: str = "training file",
               advice: str = _SPLIT) -> None:
    """DatasetError naming the file and the limit when `size` is over it (default: upload_limit_bytes)."""
    limit = upload_limit_bytes() if max_bytes is None else max_bytes
    if size > limit:
        raise DatasetError(f"{filename} is {human_size(size)}; {kind}s are at most {human_size(limit)}. {advice}")


def read_file(path: Path, *, max_bytes: int | None = None, kind: str = "training file", advice: str = _SPLIT) -> bytes:
    """The bytes of a training file on disk (the CLI's import); a missing or unreadable one raises DatasetError,
    and so does one over `max_bytes` (default: upload_limit_bytes), by its size on disk before it is read."""
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: name one JSONL, JSON or CSV file.")
    limit = upload_limit_bytes() if max_bytes is None else max_bytes
    try:
        check_size(path.name, path.stat().st_size, max_bytes, kind, advice)
        with path.open("rb") as file:
            data = file.read(limit + 1)  # no further, should it grow after the check
        check_size(path.name, len(data), max_bytes, kind, advice)
        return data
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file. Check the path and the current folder.") from None
    except OSError as error:
        raise DatasetError(f"{path} cannot be read ({error.strerror or error}). Check the file and its permissions.") from error



def decode(filename: str, data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 as most tools write it, else whatever charset-normalizer recognizes."""
    if not data.strip():
        raise DatasetError(f"{filename} is empty: there are no rows to import.")
    decoded = decode_bytes(data)
    if decoded is None:
        raise DatasetError(
            f"{filename} is not text: it is not UTF-8 and not in any other encoding we recognize (a spreadsheet "
            "or another binary file?). Save it as UTF-8 JSON Lines or CSV and try again."
        )
    return decoded


def file_type_of(filename: str, text: str) -> FileType:
    """By extension; a JSON array is recognized whatever the name, and unknown names are sniffed."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if extension in ("csv", "tsv"):
        return "csv"
    if start == "[":
        return "json"
    if extension in ("jsonl", "ndjson", "json") or start == "{":
        return "jsonl"
    return "csv"


# --- text to records --------------------------------------------------------------------------


def _read_jsonl(filename: str, text: str) -> tuple[list[str], list[Record]]:
    columns: dict[str, None] = {}
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            records.append(Record(number, None, f"invalid JSON ({error.msg} at column {error.colno})"))
            continue
        records.append(_object_record(number, value, columns))
    return list(columns), records


def _read_json_array(filename: str, text: str) -> tuple[list[str], list[Record]]:
    """One JSON array of objects (how Alpaca itself ships); each item is numbered by its first line."""
    decoder = json.JSONDecoder()
    columns: dict[str, None] = {}
    records = []
    line_of = _LineCounter(text)
    position = _skip_space(text, text.index("[") + 1)
    while position < len(text) and text[position] != "]":
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DatasetError(
                f"{filename}: line {error.lineno}: invalid JSON ({error.msg} at column {error.colno}); "
                "nothing after it can be read. Fix the file (or save it as JSON Lines) and try again."
            ) from error
        records.append(_object_record(line_of(position), value, columns))
        position = _skip_space(text, end)
        if text[position : position + 1] == ",":
            position = _skip_space(text, position + 1)
        elif text[position : position + 1] != "]":
            raise DatasetError(f"{filename}: line {line_of(position)}: expected ',' or ']' between the items of the JSON array.")
    if position >= len(text):
        raise DatasetError(f"{filename}: the JSON array is not closed with ']'; the file may be cut short.")
    return list(columns), records


class _LineCounter:
    """Line numbers of increasing offsets, counted once (a large array stays linear)."""

    def __init__(self, text: str):
        self.text, self.offset, self.line = text, 0, 1

    def __call__(self, position: int) -> int:
        self.line += self.text.count("\n", self.offset, position)
        self.offset = position
        return self.line


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _object_record(row: int, value, columns: dict[str, None]) -> Record:
    if not isinstance(value, dict):
        return Record(row, None, f"expected a JSON object like {{\"messages\": [...]}}, found {json_kind(value)}")
    fields = {str(key).strip().lower(): item for key, item in value.items()}
    columns.update(dict.fromkeys(fields))
    return Record(row, fields)


def _read_csv(filename: str, text: str) -> tuple[list[str], list[Record]]:
    """Rows keyed by the (lower-cased) header; a row is numbered by the line it starts on."""
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 2**20))  # long answers are normal here
    first_line = next((line for line in text.split("\n") if line.strip()), "")
    delimiter = "\t" if filename.lower().endswith(".tsv") else max(",;\t", key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    records: list[Record] = []
    previous_line = 0
    try:
        for cells in reader:
            row, previous_line = previous_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = _csv_header(filename, cells)
            elif len(cells) > len(header) and any(cell.strip() for cell in cells[len(header):]):
                records.append(Record(row, None, f"{len(cells)} values but the header names {len(header)} columns "
                                                  f"(a value containing '{delimiter}' without quotes around it?)"))
            else:
                records.append(Record(row, {name: cell for name, cell in zip(header, cells, strict=False) if name}))
    except csv.Error as error:
        raise DatasetError(f"{filename}: line {reader.line_num}: not valid CSV ({error}). Check the quoting and export it again.") from error
    if header is not None and not records:
        raise DatasetError(f"{filename} has a header row but no data rows.")
    return [name for name in header or [] if name], records


def _csv_header(filename: str, cells: list[str]) -> list[str]:
    header = [cell.strip().lstrip("\ufeff").lower() for cell in cells]
    duplicates = sorted({name for name in header if name and header.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{filename}: the header has more than one column named {duplicates[0]!r}; rename one.")
    return header


_READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv}


def json_kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"
