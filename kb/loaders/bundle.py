"""Document bundles (``.kbdocs``): already-extracted documents (text with page and heading), as one file.

This is how documents that arrive as text rather than as a file (LangChain ``Document``s from any LangChain
loader: ``KnowledgeBase.add_documents``) go through the same ingest job as uploads: the documents of one source
become one canonical JSON file, stored and deduplicated by its sha256 like any upload, and this loader turns
it back into ``Document``s. Canonical means only the content counts (texts, pages, headings, title; sorted
keys, no whitespace), so the same documents give the same bytes and are skipped as duplicates whatever
loader or source path produced them.

Layout: ``{"format": "kbchat-documents", "version": 1, "title": str | null,
"documents": [{"text": str, "page": int | null, "heading": str | null}, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from kb.loaders import BUNDLE_EXTENSION
from kb.loaders.base import Collector, LoaderOptions
from kb.types import LoadedFile, LoadError

FORMAT = "kbchat-documents"
VERSION = 1
# Markdown header splitters (LangChain's MarkdownHeaderTextSplitter) put the heading path in these keys.
_HEADER_KEYS = tuple(f"Header {i}" for i in range(1, 7))


class TextDocument(Protocol):
    """What a LangChain ``Document`` looks like to us (duck-typed: this module never imports LangChain)."""

    page_content: str
    metadata: dict[str, Any]


def page_of(meta: Mapping[str, Any]) -> int | None:
    """A 1-based page from a document's metadata. ``page_number`` is 1-based (Unstructured, and our own
    documents); LangChain's PDF loaders (PyPDF, PyMuPDF, PDFPlumber) count ``page`` from 0 and always set
    ``total_pages``; otherwise ``page`` is taken as 1-based, as our retriever and citations give it."""
    for key, shift in (("page_number", 0), ("page", 1 if "total_pages" in meta else 0)):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value + shift >= 1:
            return value + shift
        if isinstance(value, str) and value.isdigit() and int(value) + shift >= 1:
            return int(value) + shift
    return None


def heading_of(meta: Mapping[str, Any]) -> str | None:
    heading = meta.get("heading")
    if isinstance(heading, str) and heading.strip():
        return heading.strip()
    path = [str(meta[k]).strip() for k in _HEADER_KEYS if meta.get(k)]
    return " > ".join(p for p in path if p) or None


def source_name(source: object) -> str:
    """The file name documents from ``source`` are kept under: a path's file name, a URL without its scheme."""
    text = str(source or "").strip()
    if "://" in text:
        return text.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0].strip("/") or "documents"
    return Path(text).name or "documents"


def make_bundles(docs: Iterable[TextDocument]) -> list[tuple[str, bytes]]:
    """Group documents by ``metadata["source"]`` (first-seen order) into (file name, bundle bytes), one per
    source; documents without a source share the file ``documents.kbdocs``."""
    groups: dict[str, list[TextDocument]] = {}
    for doc in docs:
        if not isinstance(getattr(doc, "page_content", None), str):
            raise TypeError(f"not a document (no text page_content): {type(doc).__name__}")
        meta = getattr(doc, "metadata", None) or {}
        groups.setdefault(str(meta.get("source") or ""), []).append(doc)
    out = []
    for source, group in groups.items():
        title = next((str(d.metadata["title"]) for d in group if (d.metadata or {}).get("title")), None)
        body = {"format": FORMAT, "version": VERSION, "title": title, "documents": [
            {"text": d.page_content, "page": page_of(d.metadata or {}), "heading": heading_of(d.metadata or {})}
            for d in group]}
        data = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
        out.append((source_name(source) + BUNDLE_EXTENSION, data))
    return out


def load_bundle(path: Path, options: LoaderOptions) -> LoadedFile:
    """Read a bundle (possibly an untrusted upload: every field is checked) into Documents."""
    try:
        body = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LoadError(f"not a document bundle: {type(e).__name__}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("documents"), list):
        raise LoadError("not a document bundle")
    if body.get("version") != VERSION:
        raise LoadError(f"unknown document bundle version {body.get('version')!r}")
    out = Collector(options)
    pages = [0]
    for doc in body["documents"]:
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise LoadError("damaged document bundle: a document without text")
        page = doc.get("page") if isinstance(doc.get("page"), int) and doc["page"] >= 1 else None
        heading = doc.get("heading") if isinstance(doc.get("heading"), str) else None
        if page is not None and page > options.max_pages:
            if f"only the first {options.max_pages} pages were indexed" not in out.warnings:
                out.warnings.append(f"only the first {options.max_pages} pages were indexed")
            continue
        pages.append(page or 0)
        out.add(doc["text"], page=page, heading=heading[:300] if heading else None)
    title = body.get("title") if isinstance(body.get("title"), str) else None
    return out.finish(title=title, pages=max(pages) or None)
