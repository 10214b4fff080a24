"""HTML / XHTML / XML: visible text in document order, h1-h6 as heading path, tables as row groups."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from kb.loaders.base import Collector, LoaderOptions
from kb.loaders.encoding import declared_encoding, decode_bytes
from kb.loaders.sniff import describe
from kb.loaders.tables import add_table
from kb.loaders.text import Sections
from kb.types import LoadedFile, LoadError

_DROP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head", "button", "select"}
_BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "section", "article", "header", "footer", "blockquote", "pre",
          "dd", "dt", "dl", "figure", "figcaption", "hr", "form", "main", "nav", "aside", "address", "caption",
          "td", "th", "body", "html"}
_HEADING = re.compile(r"^h([1-6])$")
_WS = re.compile(r"[ \t\r\n\f\u00a0]+")
_TAG = re.compile(r"<[A-Za-z/!][^>]{0,500}>")


def _soup(markup: str):
    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():  # html.parser is lenient and never fetches DTDs/entities
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", UserWarning)
        return BeautifulSoup(markup, "html.parser")


def _strip_markup(text: str) -> str:
    """Escaped HTML inside XML text (RSS descriptions) -> its text."""
    if _TAG.search(text):
        return _soup(text).get_text(" ")
    return text


def walk_html(root, out: Collector, *, meta: dict | None = None, page: int | None = None, xml: bool = False,
              base_heading: list[tuple[int, str]] | None = None) -> None:
    """Emit sections and tables of a parsed (BeautifulSoup) tree. Iterative: deep nesting can't recurse."""
    from bs4 import CData, Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    sec = Sections(out, dict(meta or {}), page=page, sep="")
    sec.stack = list(base_heading or [])

    skip = (Comment, Declaration, Doctype, ProcessingInstruction)
    stack: list = [root]
    pre_depth = 0
    while stack and not out.full:
        node = stack.pop()
        if isinstance(node, str) and not isinstance(node, NavigableString):  # markers pushed below
            if node == "\x00/pre":
                pre_depth -= 1
            else:
                sec.lines.append(node)
            continue
        if isinstance(node, NavigableString):
            if isinstance(node, skip):
                continue
            text = str(node)
            if xml or isinstance(node, CData):
                text = _strip_markup(text)
            sec.lines.append(text if pre_depth else _WS.sub(" ", text))
            continue
        if not isinstance(node, Tag):
            continue
        name = (node.name or "").lower().split(":")[-1]
        if name in _DROP and not (xml and name not in ("script", "style")):
            continue
        m = _HEADING.match(name)
        if m and not xml:
            title = _WS.sub(" ", node.get_text(" ")).strip()
            if title:
                sec.heading(int(m.group(1)), title, title + "\n")
            continue
        if name == "table" and not xml:
            sec.flush()
            rows = [[_WS.sub(" ", c.get_text(" ")).strip() for c in tr.find_all(["td", "th"])]
                    for tr in node.find_all("tr")]
            if not add_table(out, rows, heading=sec.path, meta=meta, page=page):
                sec.lines.append("\n" + _WS.sub(" ", node.get_text(" ")) + "\n")
            continue
        block = xml or name in _BLOCK
        if name == "pre":
            pre_depth += 1
            stack.append("\x00/pre")
        if block:
            stack.append("\n")
        stack.extend(reversed(list(node.children)))
        if block:
            sec.lines.append("\n")
    sec.flush()


def html_title(soup) -> str | None:
    tag = soup.find("title")
    return _WS.sub(" ", tag.get_text(" ")).strip() if tag else None


def load_html(path: Path, ext: str, options: LoaderOptions) -> LoadedFile:
    data = path.read_bytes()
    if not data.strip():
        raise LoadError("empty file")
    what = describe(data[:4096])
    if what:
        raise LoadError(f"not a text file (looks like {what})")
    text, encoding = decode_bytes(data, declared=declared_encoding(data))
    soup = _soup(text)
    out = Collector(options)
    is_html = ext in (".html", ".htm", ".xhtml") or soup.find(["html", "body"]) is not None
    body = soup.find("body") if is_html else None
    walk_html(body or soup, out, meta={"encoding": encoding}, xml=not is_html)
    title = html_title(soup) if is_html else None
    if not is_html and title is None:
        first = soup.find("title")
        title = _WS.sub(" ", first.get_text(" ")).strip() if first else None
    return out.finish(title=title)
