"""Plain text and markdown: encoding detection, then one Document per heading section."""

from __future__ import annotations

import re
from pathlib import Path

from kb.loaders.base import Collector, LoaderOptions
from kb.loaders.encoding import decode_bytes
from kb.loaders.sniff import describe
from kb.types import LoadedFile, LoadError

MARKDOWN_EXTS = {".md", ".markdown"}

# The heading text is taken apart in _atx(): a regex with a lazy text group before optional trailing blanks and
# '#'s backtracks quadratically on a long run of blanks (a 100 KB line took minutes).
_ATX_START = re.compile(r" {0,3}(#{1,6})(?:[ \t]|$)")


def _atx(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading such as ``## Title ##``, or None; linear in the line's length."""
    m = _ATX_START.match(line)
    if not m:
        return None
    text = line[m.end():].strip(" \t")
    closed = text.rstrip("#")
    if closed != text and (not closed or closed[-1] in " \t"):  # a closing '#' run needs a blank before it
        text = closed.rstrip(" \t")
    return (len(m.group(1)), text) if text else None


_ATX_LINE = re.compile(r"^#{1,6}[ \t]+\S", re.M)
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^\s*([-*+>|]|\d+[.)]\s|#|$)")
# Chapter-like lines in plain text ("CHAPTER IV", "Part 2", "第三章 ...") act as headings.
_TXT_HEADING = re.compile(
    r"^\s*((?:CHAPTER|Chapter|BOOK|Book|PART|Part|SECTION|Section)\s+[0-9IVXLCDM]+\b.{0,80}"
    r"|第[0-9一二三四五六七八九十百千零〇两]+[章节回篇部卷].{0,60})\s*$"
)


def read_text(path: Path) -> tuple[str, str]:
    """Read and decode a text-like file; reject binary formats with a helpful reason."""
    data = path.read_bytes()
    if not data:
        raise LoadError("empty file")
    what = describe(data[:4096])
    if what and not data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        raise LoadError(f"not a text file (looks like {what})")
    return decode_bytes(data)


class Sections:
    """Builds heading paths ("Title > Section > Sub") and flushes text between headings."""

    def __init__(self, out: Collector, meta: dict, *, page: int | None = None, sep: str = "\n") -> None:
        self.out, self.meta, self.page, self.sep = out, meta, page, sep
        self.stack: list[tuple[int, str]] = []
        self.lines: list[str] = []

    @property
    def path(self) -> str | None:
        return " > ".join(title for _, title in self.stack) or None

    def flush(self) -> None:
        if self.lines:
            self.out.add(self.sep.join(self.lines), heading=self.path, meta=self.meta, page=self.page)
        self.lines = []

    def heading(self, level: int, title: str, line: str) -> None:
        self.flush()
        title = re.sub(r"[*_`]+", "", title).strip() or title.strip()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title[:200]))
        self.lines = [line]  # keep the heading line itself in the section text


def _markdown(text: str, out: Collector, meta: dict) -> None:
    sec = Sections(out, meta)
    lines = text.split("\n")
    fence: str | None = None
    start = 0
    if lines and lines[0].strip() == "---":  # YAML front matter: plain text, no setext headings inside
        end = next((i for i in range(1, min(len(lines), 200)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            sec.lines.extend(lines[: end + 1])
            start = end + 1
    for line in lines[start:]:
        if out.full:
            return
        m = _FENCE.match(line)
        if m:
            marker = m.group(1)[0]
            fence = None if fence == marker else (fence or marker)
            sec.lines.append(line)
            continue
        if fence:
            sec.lines.append(line)
            continue
        atx = _atx(line)
        if atx:
            sec.heading(*atx, line)
            continue
        m = _SETEXT.match(line)
        prev = sec.lines[-1] if sec.lines else ""
        if m and prev.strip() and not _NOT_PARAGRAPH.match(prev) and len(sec.lines) >= 1:
            above = sec.lines[-2] if len(sec.lines) >= 2 else ""
            if not above.strip():  # a one-line paragraph underlined by === / ---
                sec.lines.pop()
                sec.heading(1 if m.group(1)[0] == "=" else 2, prev.strip(), prev + "\n" + line)
                continue
        sec.lines.append(line)
    sec.flush()


def _plain(text: str, out: Collector, meta: dict) -> None:
    sec = Sections(out, meta)
    for line in text.split("\n"):
        if out.full:
            return
        if len(line) < 100 and _TXT_HEADING.match(line):
            sec.heading(1, line.strip(), line)
        else:
            sec.lines.append(line)
    sec.flush()


def load_text(path: Path, ext: str, options: LoaderOptions) -> LoadedFile:
    text, encoding = read_text(path)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = Collector(options)
    meta = {"encoding": encoding}
    # .txt files written in markdown (common in KB exports) get markdown sections too
    markdown = ext in MARKDOWN_EXTS or (ext == ".txt" and len(_ATX_LINE.findall(text[:200_000])) >= 2)
    if markdown:
        _markdown(text, out, meta)
    else:
        _plain(text, out, meta)
    title = None
    if markdown:
        title = next((h[1] for line in text.split("\n", 200)[:200] if (h := _atx(line)) and h[0] == 1), None)
    return out.finish(title=title)
