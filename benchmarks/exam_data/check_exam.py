"""Check the benchmark exam against its documents, through the product's own parser.

    .venv/bin/python benchmarks/exam_data/check_exam.py [--documents DIR] [--exam FILE]

What it checks (exit status 1 on any failure, 0 otherwise):
- every document in SHA256SUMS is present and unchanged, and documents/ holds nothing else;
- every line of exam.jsonl is a JSON object with the expected fields and types, ids and
  questions are unique;
- in-scope questions name a shipped document, `document_group` equals `source_document`, and
  `source_passage` occurs in ONE section (a PDF page, an HTML/Markdown heading section) of the
  text that `core.documents.parsing.parse_document` extracts, after whitespace is collapsed;
- out-of-scope questions have reference_answer "The documents do not say.", no source, and a
  `document_group` that names a shipped document;
- every document has at least one question.
Warnings (not failures): a reference answer whose words are mostly absent from its passage, and a
question that copies a long run of words from its passage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.documents.parsing import parse_document  # noqa: E402

try:  # the PostgreSQL pages are XHTML; the product parses them as HTML on purpose
    import warnings

    from bs4 import XMLParsedAsHTMLWarning

    warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)
except ImportError:  # older BeautifulSoup: nothing to silence
    pass

OUT_OF_SCOPE_ANSWER = "The documents do not say."
FIELDS = {
    "id": str,
    "question": str,
    "reference_answer": str,
    "source_document": (str, type(None)),
    "source_passage": (str, type(None)),
    "out_of_scope": bool,
    "document_group": str,
}


def normalize(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines, NBSP) to one space."""
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ")).strip()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def read_checksums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def longest_shared_run(a: list[str], b: list[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=Path, default=HERE / "documents")
    parser.add_argument("--exam", type=Path, default=HERE / "exam.jsonl")
    parser.add_argument("--checksums", type=Path, default=HERE / "SHA256SUMS")
    args = parser.parse_args()

    errors: list[str] = []
    warnings: list[str] = []

    # 1. The documents: present, unchanged, nothing else in the folder.
    sums = read_checksums(args.checksums)
    present = {p.name for p in args.documents.iterdir() if p.is_file()}
    for name in sorted(present - set(sums)):
        errors.append(f"{args.documents / name}: not listed in {args.checksums.name}")
    sections: dict[str, list[tuple[str, str]]] = {}  # name -> [(location, normalized text)]
    for name, digest in sums.items():
        path = args.documents / name
        if not path.is_file():
            errors.append(f"{name}: missing from {args.documents}")
            continue
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            errors.append(f"{name}: sha256 {actual} does not match {digest}")
        parsed = parse_document(name, data)
        sections[name] = [
            (f"page {s.page}" if s.page is not None else (s.heading or "(top)"), normalize(s.text)) for s in parsed.sections
        ]

    # 2. The exam, line by line.
    items = []
    for number, line in enumerate(args.exam.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            errors.append(f"exam line {number}: blank line")
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"exam line {number}: not JSON ({error})")
            continue
        where = f"exam line {number} ({item.get('id', '?')})"
        bad = [f for f, kind in FIELDS.items() if not isinstance(item.get(f, ...), kind)]
        extra = sorted(set(item) - set(FIELDS))
        if bad or extra:
            errors.append(f"{where}: wrong or missing fields {bad}, unexpected {extra}")
            continue
        if not item["question"].strip() or not item["reference_answer"].strip():
            errors.append(f"{where}: empty question or reference_answer")
        if item["document_group"] not in sums:
            errors.append(f"{where}: document_group {item['document_group']!r} is not a shipped document")
        if item["out_of_scope"]:
            if item["reference_answer"] != OUT_OF_SCOPE_ANSWER:
                errors.append(f"{where}: out-of-scope answer must be {OUT_OF_SCOPE_ANSWER!r}")
            if item["source_document"] is not None or item["source_passage"] is not None:
                errors.append(f"{where}: out-of-scope question must have no source_document/source_passage")
        else:
            document, passage = item["source_document"], item["source_passage"]
            if document not in sums or passage is None:
                errors.append(f"{where}: source_document {document!r} is not shipped, or no source_passage")
                continue
            if item["document_group"] != document:
                errors.append(f"{where}: document_group must equal source_document")
            needle = normalize(passage)
            found = [loc for loc, text in sections.get(document, []) if needle in text]
            item["_found"] = found
            if not found:
                whole = " ".join(text for _, text in sections.get(document, []))
                hint = " (it spans two sections)" if needle in whole else ""
                errors.append(f"{where}: source_passage not found in one section of {document}{hint}: {needle[:80]!r}")
            answer_words = [w for w in words(item["reference_answer"]) if len(w) > 2 or w.isdigit()]
            passage_words = set(words(passage))
            if answer_words:
                recall = sum(w in passage_words for w in answer_words) / len(answer_words)
                if recall < 0.5:
                    warnings.append(f"{where}: only {recall:.0%} of the answer's words are in its passage")
            run = longest_shared_run(words(item["question"]), words(passage))
            if run >= 8:
                warnings.append(f"{where}: question copies {run} consecutive words of its passage")
        items.append(item)

    for field in ("id", "question"):
        for value, count in Counter(item[field] for item in items).items():
            if count > 1:
                errors.append(f"{field} {value!r} appears {count} times")

    # 3. Coverage per document.
    in_scope = Counter(i["document_group"] for i in items if not i["out_of_scope"])
    out_scope = Counter(i["document_group"] for i in items if i["out_of_scope"])
    for name in sums:
        if not in_scope[name]:
            errors.append(f"{name}: no in-scope question")

    width = max(map(len, sums)) if sums else 10
    print(f"{'document':<{width}}  {'sections':>8}  {'in scope':>8}  {'out of scope':>12}")
    for name in sorted(sums):
        print(f"{name:<{width}}  {len(sections.get(name, [])):>8}  {in_scope[name]:>8}  {out_scope[name]:>12}")
    print(f"{'total':<{width}}  {'':>8}  {sum(in_scope.values()):>8}  {sum(out_scope.values()):>12}")
    for message in warnings:
        print(f"warning: {message}")
    for message in errors:
        print(f"ERROR: {message}")
    print(f"{len(items)} questions, {len(errors)} errors, {len(warnings)} warnings")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
