"""Bytes of an uploaded file to text, whatever encoding they were written in.

Documents (core.documents.parsing) and training files (core.datasets.files) both take text files
from anywhere: UTF-8 as most tools write it, UTF-16 or UTF-8 with a byte-order mark as Windows
tools write it, else a legacy code page that charset-normalizer recognizes. Each caller turns
"not text" into its own error, naming the file.
"""

from __future__ import annotations

import unicodedata

_BYTE_ORDER_MARKS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
# Short texts decode cleanly in many legacy code pages (charset-normalizer may not even offer cp1252
# for French); among equally clean readings, prefer the Western ones most documents and exports use.
_WESTERN = ("cp1252", "latin_1", "iso8859_15")


def decode_bytes(data: bytes) -> tuple[str, str] | None:
    """(text, encoding name), or None when the bytes are not text (a binary file named like text)."""
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                break  # a binary file that happens to start like a mark: let the detector judge
    if b"\x00" not in data[:8192]:  # NUL bytes: UTF-16 without a mark, or a binary file
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    matches = [*from_bytes(data), *from_bytes(data, cp_isolation=list(_WESTERN))]
    best = min(matches, key=lambda m: (round(m.chaos, 2), m.encoding not in _WESTERN)) if matches else None
    if best is None or looks_binary(str(best)):
        return None
    return str(best), best.encoding


def looks_binary(text: str) -> bool:
    """NUL or more than 2% control characters (tabs and line breaks aside) in the first 20,000."""
    sample = text[:20000]
    control = sum(1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f\v")
    return "\x00" in sample or control > 0.02 * max(len(sample), 1)
