"""Turn a training file's records into chat conversations.

The format is detected per file from its field names: chat (`messages`), Alpaca (`instruction`,
optional `input`, `output`) or prompt/completion. Every row becomes a list of {role, content}
turns; a row that cannot becomes a `RowProblem` naming the line the user sees in an editor, so
the file can be fixed. Nothing here needs a model or the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from core.datasets.errors import DatasetError
from core.datasets.files import FileType, Record, json_kind, read_records

Format = Literal["chat", "alpaca", "prompt_completion"]
FORMAT_LABELS: dict[str, str] = {
    "chat": "chat (messages)",
    "alpaca": "Alpaca (instruction, input, output)",
    "prompt_completion": "prompt/completion",
}
EXPECTED_FIELDS = (
    "'messages' (chat); 'instruction' and 'output', optionally 'input' and 'system' (Alpaca); "
    "'prompt' and 'completion' (prompt/completion)"
)
ROLES = ("system", "user", "assistant")

# Field names that vote for a format; ties go to the first. The required ones must all be there.
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}


@dataclass(frozen=True)
class RowProblem:
    row: int  # the line an editor shows: JSON Lines line, or CSV line with the header as line 1
    problem: str

    def __str__(self) -> str:
        return f"line {self.row}: {self.problem}"


@dataclass(frozen=True)
class Conversation:
    row: int
    messages: list[dict]


@dataclass
class ParsedFile:
    file_type: FileType
    format: Format
    columns: list[str]
    encoding: str
    conversations: list[Conversation] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


class RowInvalid(ValueError):
    """One row cannot become a conversation; the message is what follows "line N:"."""


def parse_training_file(filename: str, data: bytes) -> ParsedFile:
    """The file's conversations and row problems; a file that is unusable as a whole raises DatasetError."""
    file_type, encoding, columns, records = read_records(filename, data)
    format_ = detect_format(filename, file_type, columns, records)
    parsed = ParsedFile(file_type, format_, columns, encoding)
    for record in records:
        try:
            if record.problem:
                raise RowInvalid(record.problem)
            parsed.conversations.append(Conversation(record.row, to_messages(record.fields, format_)))
        except RowInvalid as error:
            parsed.problems.append(RowProblem(record.row, str(error)))
    return parsed


# --- records to conversations -----------------------------------------------------------------


def detect_format(filename: str, file_type: FileType, columns: list[str], records: list[Record]) -> Format:
    """The format whose field names most rows use; refuses a file that uses none of them."""
    readable = [r for r in records if r.fields is not None]
    if not readable:
        listed = "\n".join(f"line {r.row}: {r.problem}" for r in records[:10])
        raise DatasetError(f"{filename}: no row could be read:\n{listed}")
    votes = {name: sum(any(key in r.fields for key in keys) for r in readable) for name, keys in _SIGNATURES.items()}
    best = max(votes, key=votes.get)
    found = ", ".join(repr(c) for c in columns[:20]) + (" …" if len(columns) > 20 else "")
    if votes[best] == 0:
        raise DatasetError(f"{filename}: no recognizable columns. Found {found or 'none'}; expected {EXPECTED_FIELDS}.")
    missing = [key for key in _SIGNATURES[best] if key not in columns]
    if file_type == "csv" and missing:
        raise DatasetError(
            f"{filename} looks like {FORMAT_LABELS[best]} but has no {missing[0]!r} column. Found {found}; expected {EXPECTED_FIELDS}."
        )
    return best  # type: ignore[return-value]


def to_messages(fields: dict, format_: Format) -> list[dict]:
    """One row as chat turns; raises RowInvalid with the reason when it cannot be."""
    if format_ == "chat":
        if fields.get("messages") is None:
            raise RowInvalid("missing field 'messages'")
        return check_messages(fields["messages"])
    question_key, answer_key = ("instruction", "output") if format_ == "alpaca" else ("prompt", "completion")
    question = _text_field(fields, question_key, required=True)
    answer = _text_field(fields, answer_key, required=True)
    extra = _text_field(fields, "input", required=False) if format_ == "alpaca" else ""
    system = _text_field(fields, "system", required=False)
    if not question:
        raise RowInvalid(f"empty {question_key}")
    if not answer:
        raise RowInvalid("empty answer")
    user = f"{question}\n\n{extra}" if extra else question
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]


def check_messages(value) -> list[dict]:
    """Turns with known roles and text, a system turn only first, ending with the answer to learn."""
    if isinstance(value, str):  # CSV cells hold the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RowInvalid(f"'messages' is text that is not JSON, not a list of turns ({error.msg} at column {error.colno})") from error
    if not isinstance(value, list) or not value:
        raise RowInvalid("'messages' must be a non-empty list of turns like {\"role\": \"user\", \"content\": \"...\"}")
    messages: list[dict] = []
    for number, turn in enumerate(value, start=1):
        if not isinstance(turn, dict) or "role" not in turn:
            raise RowInvalid(f"turn {number} is not an object with 'role' and 'content'")
        role = turn["role"]
        if role not in ROLES:
            raise RowInvalid(f"turn {number} has unknown role {role!r} (expected system, user or assistant)")
        content = _turn_text(turn.get("content"))
        if content is None:
            raise RowInvalid(f"turn {number} ({role}) has no text 'content'")
        if role == "system":
            if number > 1:
                raise RowInvalid(f"turn {number} is a system turn; a system turn can only come first")
            if content:
                messages.append({"role": role, "content": content})
            continue  # an empty system prompt says nothing: dropped
        if not content:
            raise RowInvalid("empty answer" if role == "assistant" and number == len(value) else f"turn {number} ({role}) is empty")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise RowInvalid("the conversation has no user turn")
    if messages[-1]["role"] != "assistant":
        raise RowInvalid(
            f"the conversation ends with a {messages[-1]['role']} turn; it must end with an assistant turn (the answer to learn)"
        )
    return messages


def _turn_text(content) -> str | None:
    """A turn's text; OpenAI-style content parts [{"type": "text", "text": ...}] are joined."""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return clean_text("".join(str(p.get("text", "")) for p in content))
    return None


def _text_field(fields: dict, key: str, *, required: bool) -> str:
    value = fields.get(key)
    if value is None:
        if required:
            raise RowInvalid(f"missing field {key!r}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowInvalid(f"field {key!r} must be text, not {json_kind(value)}")
    return clean_text(str(value))


def clean_text(value: str) -> str:
    """Postgres text cannot hold NUL; Windows line ends and outer blanks carry nothing to learn."""
    return value.replace("\x00", "").replace("\r\n", "\n").strip()
