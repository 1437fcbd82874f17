"""Check a training file before anything is written: the detected format, every bad row with its
line and reason, and each example's length in the chosen base model's tokens (chat template
included), so a page can show a preview and a length chart and the user decides whether to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.config import Settings, get_settings
from core.datasets.errors import DatasetError
from core.datasets.files import FILE_TYPE_LABELS, FileType, read_file
from core.datasets.formats import FORMAT_LABELS, Format, RowProblem, parse_training_file
from core.formatting import plural

DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class ImportedExample:
    row: int
    messages: list[dict]
    tokens: int


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of every example that became a conversation (too-long ones included, so a
    chart shows how far over the maximum they are)."""

    count: int
    min: int
    p50: int
    p90: int
    p95: int
    max: int
    lengths: list[int]  # one per example, in file order: ready for a histogram

    @classmethod
    def of(cls, lengths: list[int]) -> LengthStats:
        ordered = sorted(lengths)

        def percentile(p: float) -> int:  # nearest rank: always a length that occurs
            return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else 0

        return cls(len(ordered), ordered[0] if ordered else 0, percentile(50), percentile(90), percentile(95),
                   ordered[-1] if ordered else 0, list(lengths))


@dataclass(frozen=True)
class DatasetPreview:
    filename: str
    file_type: FileType
    format: Format
    columns: list[str]
    encoding: str
    model_id: str
    max_tokens: int  # the limit applied: the requested maximum, or the model's window if smaller
    examples: list[ImportedExample]  # the rows that will be saved
    problems: list[RowProblem]  # every row that will not, in file order
    lengths: LengthStats
    notes: list[str]

    @property
    def detected(self) -> str:
        return f"{FORMAT_LABELS[self.format]} in {FILE_TYPE_LABELS[self.file_type]}"

    @property
    def source(self) -> str:
        """How the saved dataset describes where it came from."""
        return f"{self.filename} ({FORMAT_LABELS[self.format]})"

    @property
    def summary(self) -> str:
        problems = plural(len(self.problems), "row") + " with problems" if self.problems else "no problems"
        return f"{self.filename}: {self.detected}; {plural(len(self.examples), 'valid example')}, {problems}."

    def problem_list(self, limit: int | None = 20) -> str:
        """The problems one per line, the first `limit` of them (None: all)."""
        shown = self.problems if limit is None else self.problems[:limit]
        more = len(self.problems) - len(shown)
        return "\n".join([*map(str, shown), *([f"… and {more:,} more"] if more else [])])


def preview_dataset_file(path: str | Path, *, model_id: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                         settings: Settings | None = None) -> DatasetPreview:
    """preview_dataset of a file on disk; a missing or unreadable file raises DatasetError."""
    path = Path(path)
    return preview_dataset(path.name, read_file(path), model_id=model_id, max_tokens=max_tokens, settings=settings)


def preview_dataset(filename: str, data: bytes, *, model_id: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                    settings: Settings | None = None) -> DatasetPreview:
    """Parse and check a JSONL/JSON/CSV file; writes nothing. Raises DatasetError only when the file
    as a whole is unusable (empty, not text, no known columns); bad rows are listed instead."""
    settings = settings or get_settings()
    model_id = model_id or settings.language_model
    if max_tokens < 1:
        raise DatasetError(f"The maximum length must be at least 1 token; got {max_tokens}.")
    parsed = parse_training_file(filename, data)
    tokenizer, window = chat_tokenizer(model_id, settings)
    limit = min(max_tokens, window)
    notes = [f"Not UTF-8: read as {parsed.encoding}."] if parsed.encoding not in ("utf-8", "utf-8-sig") else []
    if limit < max_tokens:
        notes.append(f"{model_id} reads at most {window:,} tokens, so that is the maximum length used, not {max_tokens:,}.")

    examples, problems, lengths = [], list(parsed.problems), []
    conversations = parsed.conversations
    for conversation, length in zip(conversations, template_lengths(tokenizer, [c.messages for c in conversations]), strict=True):
        if isinstance(length, str):
            problems.append(RowProblem(conversation.row, f"the chat template of {model_id} refuses it ({length})"))
            continue
        lengths.append(length)
        if length > limit:
            problems.append(RowProblem(conversation.row, f"{length:,} tokens after the chat template, over the maximum of {limit:,}"))
        else:
            examples.append(ImportedExample(conversation.row, conversation.messages, length))
    problems.sort(key=lambda p: p.row)
    return DatasetPreview(filename, parsed.file_type, parsed.format, parsed.columns, parsed.encoding, model_id, limit,
                          examples, problems, LengthStats.of(lengths), notes)


# --- tokens -----------------------------------------------------------------------------------


def chat_tokenizer(model_id: str, settings: Settings | None = None) -> tuple[object, int]:
    """(tokenizer, context window) of a model, without loading its weights: validating a file for a
    3.8B model should not need gigabytes of memory."""
    from core.models import resolve_model_path

    return _tokenizer_at(str(resolve_model_path(model_id, settings)))


@lru_cache(maxsize=4)
def _tokenizer_at(path: str) -> tuple[object, int]:
    from transformers import AutoConfig, AutoTokenizer

    from core.models.context import context_window

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise DatasetError(f"{path} has no chat template, so chat examples cannot be measured for it: choose an instruct/chat model.")
    window = context_window(AutoConfig.from_pretrained(path), tokenizer)
    tokenizer.model_max_length = 2**40  # our own copy: measuring long rows is the point, no warning needed
    return tokenizer, window


def template_lengths(tokenizer, conversations: list[list[dict]], batch_size: int = 256) -> list[int | str]:
    """Each conversation's length in tokens through the chat template, or the template's error message."""
    lengths: list[int | str] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        try:
            encoded = tokenizer.apply_chat_template(batch, tokenize=True, return_dict=True)
            lengths += [len(ids) for ids in encoded["input_ids"]]
        except Exception:  # one conversation the template refuses: measure one by one to name it
            lengths += [_length_or_error(tokenizer, conversation) for conversation in batch]
    return lengths


def _length_or_error(tokenizer, messages: list[dict]) -> int | str:
    try:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    except Exception as error:  # jinja2 TemplateError and friends, raised by the model's own template
        return str(error)[:200] or type(error).__name__
