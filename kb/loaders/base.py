"""Shared pieces of the loaders: options, text cleaning and the per-file document collector."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from kb.types import Document, LoadedFile, LoadError

# Documents bigger than this are cut at paragraph boundaries: keeps one giant .txt or
# markdown section from becoming a single multi-megabyte unit for the splitter.
MAX_DOC_CHARS = 20_000

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff\ufffe\uffff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TRAILING_BLANKS = " \t\u3000"
_MANY_BLANKS = re.compile(r"\n{3,}")


@dataclass
class LoaderOptions:
    max_pages: int = 2000
    ocr: bool = True
    max_file_mb: int = 100
    timeout_s: float = 600
    max_chars: int = 20_000_000
    # Address-space limit of the child in load_file_isolated (not used by load_file).
    max_memory_mb: int = 4096


def clean_text(text: str) -> str:
    """Normalise line endings, drop NULs/control chars/lone surrogates, squeeze blank lines."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SURROGATE.sub("", text)
    # Per line, not a regex: "[ \t]+\n" backtracks quadratically over a long run of blanks not ending a line.
    text = "\n".join(line.rstrip(_TRAILING_BLANKS) for line in text.split("\n"))
    text = _MANY_BLANKS.sub("\n\n", text)
    return text.strip()


def split_long(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Cut ``text`` into pieces <= limit, preferring blank lines, then newlines, then hard cuts."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n\n", limit // 2, limit)
        if cut < 0:
            cut = text.rfind("\n", limit // 2, limit)
        if cut < 0:
            cut = limit
        parts.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        parts.append(text)
    return [p for p in parts if p]


@dataclass
class Collector:
    """Accumulates Documents for one file and enforces ``max_chars``."""

    options: LoaderOptions
    docs: list[Document] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ocr_pages: list[int] = field(default_factory=list)
    chars: int = 0
    full: bool = False
    started: float = field(default_factory=time.monotonic)

    def add(self, text: str, *, page: int | None = None, heading: str | None = None, kind: str = "text",
            meta: dict | None = None, clean: bool = True, split: bool = True) -> None:
        if self.full:
            return
        if clean:
            text = clean_text(text)
        if not text.strip():
            return
        pieces = split_long(text) if split and kind == "text" else [text]
        for piece in pieces:
            room = self.options.max_chars - self.chars
            if len(piece) > room:
                piece = piece[:max(room, 0)]
                self.full = True
                self.warnings.append(f"text truncated at {self.options.max_chars:,} characters")
            if piece.strip():
                self.docs.append(Document(text=piece, page=page, heading=heading or None, kind=kind,  # type: ignore[arg-type]
                                          meta=dict(meta or {})))
                self.chars += len(piece)
            if self.full:
                return

    def time_left(self) -> float:
        """Seconds left before ~80% of the file's time budget is spent (used to stop OCR early)."""
        return self.options.timeout_s * 0.8 - (time.monotonic() - self.started)

    def finish(self, *, title: str | None = None, pages: int | None = None,
               empty_reason: str = "empty: no text found") -> LoadedFile:
        if not any(d.text.strip() for d in self.docs):
            raise LoadError(empty_reason)
        title = clean_text(title).replace("\n", " ")[:300] if title else None
        return LoadedFile(docs=self.docs, title=title or None, pages=pages, ocr_pages=sorted(set(self.ocr_pages)),
                          warnings=self.warnings)


def ext_of(path: Path, name: str | None) -> str:
    """Extension that picks the loader: the user's original name wins over the (temp) path."""
    for candidate in (name, path.name):
        if candidate:
            suffix = Path(candidate).suffix.lower()
            if suffix:
                return suffix
    return ""
