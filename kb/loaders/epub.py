"""EPUB: spine documents in reading order, HTML stripped, chapters as sections."""

from __future__ import annotations

import warnings
from pathlib import Path

from kb.loaders.base import Collector, LoaderOptions
from kb.loaders.encoding import declared_encoding, decode_bytes
from kb.loaders.html import _soup, html_title, walk_html
from kb.types import LoadedFile


def load_epub(path: Path, options: LoaderOptions) -> LoadedFile:
    import ebooklib
    from ebooklib import epub

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    out = Collector(options)
    items = []
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT:
            items.append(item)
    if not items:  # no usable spine: fall back to every XHTML document in the package
        items = list(book.get_items_of_type(ebooklib.ITEM_DOCUMENT))
    if len(items) > options.max_pages:
        out.warnings.append(f"only the first {options.max_pages} of {len(items)} chapters were read")
    for chapter, item in enumerate(items[: options.max_pages], start=1):
        if out.full:
            break
        data = item.get_content()
        text, _enc = decode_bytes(data, declared=declared_encoding(data))
        soup = _soup(text)
        before = len(out.docs)
        walk_html(soup.find("body") or soup, out, meta={"chapter": chapter})
        # Chapters without any <h*> still get a heading: the XHTML <title>, if any.
        title = html_title(soup)
        for doc in out.docs[before:]:
            if doc.heading is None and title:
                doc.heading = title
    meta_title = book.get_metadata("DC", "title")
    title = meta_title[0][0] if meta_title else None
    return out.finish(title=title, pages=len(items), empty_reason="empty: no text found in EPUB")
