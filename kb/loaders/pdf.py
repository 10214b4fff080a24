"""PDF: PyMuPDF text per page, tables on ruled pages (pdfplumber's table finder on PyMuPDF's parse), RapidOCR for
pages without a text layer."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from kb.loaders.base import Collector, LoaderOptions, clean_text
from kb.loaders.sniff import OLE2_MAGIC, describe, head
from kb.loaders.tables import add_table
from kb.types import LoadedFile, LoadError

OCR_DPI = 200
OCR_MAX_SIDE = 2600  # pixels; caps the render of huge pages (posters, maps)
MIN_TABLE_DRAWINGS = 4  # the table finder only runs on pages with some vector lines/rects
_CID = re.compile(r"\(cid:\d+\)")
_REPEATED_LINE = re.compile(r"^(.{3,}?)\1+$")  # overprinted text ("AAA" drawn 4x) -> once
_JUNK_TITLE = re.compile(r"^(microsoft (word|powerpoint|excel) - )|\.(docx?|pptx?|xlsx?|pdf|jpe?g|png|tiff?|eps|ps)$",
                         re.I)


def _dedupe_lines(text: str) -> str:
    """Undo overprinting (fake bold / shadow text drawn 2-4 times): a line that is one string repeated
    becomes that string; a wordy line right after an identical one, or any wordy line repeated 3+ times
    in a row, is dropped (short numbers may legitimately repeat, e.g. in table columns)."""
    out: list[str] = []
    run = 0
    for line in text.split("\n"):
        if len(line) < 2000:
            line = _REPEATED_LINE.sub(r"\1", line.rstrip())
        stripped = line.strip()
        same = bool(out) and stripped == out[-1].strip()
        run = run + 1 if same else 1
        wordy = sum(ch.isalpha() for ch in stripped)
        if same and stripped and ((len(stripped) >= 10 and wordy > len(stripped) / 2) or (run >= 3 and wordy >= 2)):
            continue
        out.append(line)
    return "\n".join(out)


def _open(path: Path) -> Any:
    import pymupdf

    data = head(path, 1024)
    if not data:
        raise LoadError("empty file")
    if b"%PDF" not in data:
        if data.startswith(OLE2_MAGIC):
            raise LoadError("not a PDF (looks like a legacy Office file)")
        what = describe(head(path))
        raise LoadError("not a PDF" + (f" (looks like {what})" if what else ""))
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # MuPDF raises generic errors for broken files
        raise LoadError(f"damaged PDF: {str(exc)[:120]}") from None
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise LoadError("encrypted: password required")
    return doc


def _title(doc: Any, first_page: Any) -> str | None:
    title = ((doc.metadata or {}).get("title") or "").strip()
    if title and len(title) >= 3 and not _JUNK_TITLE.search(title) and not title.lower().startswith("untitled"):
        return title
    # Otherwise the largest-font line(s) near the top of page 1.
    try:
        lines = []
        for block in first_page.get_text("dict")["blocks"]:
            for line in block.get("lines", []):
                if abs(line.get("dir", (1, 0))[0] - 1) > 0.01:  # rotated margin stamps (arXiv id)
                    continue
                text = "".join(s["text"] for s in line["spans"]).strip()
                if text:
                    lines.append((max(s["size"] for s in line["spans"]), line["bbox"][1], text))
    except Exception:
        return None
    if not lines:
        return None
    sizes = sorted(size for size, _, _ in lines)
    median, biggest = sizes[len(sizes) // 2], sizes[-1]
    if biggest < median * 1.15:
        return None
    top = sorted((y, text) for size, y, text in lines if size >= biggest - 0.5)
    candidate = " ".join(dict.fromkeys(text for _, text in top[:3])).strip()  # overprinted lines once
    return candidate[:200] if len(candidate) >= 3 else None


def _may_have_ruled_table(drawings: list[dict[str, Any]]) -> bool:
    """Whether the table finder could find anything, before the page's characters are extracted for it: its cells
    need at least two horizontal and two vertical rules of 3 pt or more (its ``edge_min_length``). Quads and
    curves are counted as both, to stay on the safe side."""
    if len(drawings) < MIN_TABLE_DRAWINGS:
        return False
    across = down = 0
    for drawing in drawings:
        for item in drawing.get("items", ()):
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                across += abs(y1 - y0) < 1 and abs(x1 - x0) >= 3
                down += abs(x1 - x0) < 1 and abs(y1 - y0) >= 3
            elif item[0] == "re":  # a thin rectangle is a rule: its short sides are dropped (under 3 pt)
                x0, y0, x1, y1 = item[1]
                across += 2 * (abs(x1 - x0) >= 3)
                down += 2 * (abs(y1 - y0) >= 3)
            else:  # "qu", "c"
                across, down = across + 2, down + 2
        if across >= 2 and down >= 2:
            return True
    return False


def _needs_ocr(page: Any, text: str) -> bool:
    """No text at all, or very little text on a page dominated by images (scans with a stamp/header)."""
    n = len(text.strip())
    if n >= 200:
        return False
    try:
        area = abs(page.rect) or 1.0
        covered = sum(abs(r & page.rect) for img in page.get_images() for r in page.get_image_rects(img[0]))
    except Exception:
        covered, area = 0.0, 1.0
    if n == 0:
        return covered > 0 or bool(page.get_cdrawings())
    return covered / area >= (0.02 if n < 100 else 0.5)


def _ocr_page(page: Any) -> str:
    import numpy as np
    import pymupdf

    from kb.loaders.ocr import ocr_array

    rect = page.rect
    zoom = min(OCR_DPI / 72, OCR_MAX_SIDE / max(rect.width, rect.height, 1))
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    img = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    return ocr_array(img)


def _merge_ocr(text: str, ocr: str) -> str:
    """Append OCR lines that the (partial) text layer does not already contain."""
    if not text.strip():
        return ocr
    known = re.sub(r"\s+", "", text)
    extra = [line for line in ocr.split("\n") if re.sub(r"\s+", "", line) not in known]
    return (text.rstrip() + "\n" + "\n".join(extra)).strip()


def _ruled_tables(page: Any, drawings: list[dict[str, Any]]) -> list[list[list[str | None]]]:
    """Tables with at least two rows and two columns, by pdfplumber's table finder (ruled cells) run on what
    PyMuPDF already parsed. pdfplumber's own page (pdfminer, pure Python) cost ~90% of the pass: 0.49 of 0.55 s
    on a 1,100-character page. On every ruled page of the shared documents both give the same tables, except
    on rotated pages, where pdfplumber reads the table turned (and its text reversed at 180 degrees) and this
    reads it as written."""
    from pdfplumber.table import TableFinder, TableSettings

    settings = TableSettings.resolve(None)
    finder = TableFinder(_PlumberPage(page, drawings), settings)  # type: ignore[arg-type]
    tables = [t.extract(**(settings.text_settings or {})) for t in finder.tables]
    return [t for t in tables if len(t) >= 2 and len(t[0]) >= 2]


class _PlumberPage:
    """The part of a pdfplumber page its table finder reads (``bbox``, ``edges``, ``chars``), from PyMuPDF:
    edges as pdfplumber makes them (each side of a rectangle, each straight segment of a path), chars with
    pdfplumber's keys."""

    def __init__(self, page: Any, drawings: list[dict[str, Any]]) -> None:
        self.bbox = tuple(page.rect)
        self.edges = [e for d in drawings for item in d.get("items", ()) for e in _edges(item)]
        self.chars: list[dict[str, Any]] = []
        for block in page.get_text("rawdict", flags=0)["blocks"]:
            for line in block.get("lines", ()):
                upright = abs(line["dir"][1]) < 1e-3 and line["dir"][0] > 0
                for span in line["spans"]:
                    for char in span["chars"]:
                        x0, top, x1, bottom = char["bbox"]
                        self.chars.append({"text": char["c"], "x0": x0, "x1": x1, "top": top, "bottom": bottom,
                                           "doctop": top, "width": x1 - x0, "height": bottom - top,
                                           "upright": upright, "size": span["size"], "fontname": span["font"]})


def _edges(item: tuple[Any, ...]) -> list[dict[str, Any]]:
    kind, points = item[0], item[1:]
    if kind == "re":
        x0, y0, x1, y1 = item[1]
        points = ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))
    elif kind == "qu":
        ul, ur, ll, lr = item[1]
        points = (ul, ur, lr, ll, ul)
    elif kind not in ("l", "c"):
        return []
    edges = []
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        horizontal, vertical = abs(y1 - y0) < 0.01, abs(x1 - x0) < 0.01
        if horizontal != vertical:  # pdfplumber keeps only horizontal and vertical edges (a point is neither)
            left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
            edges.append({"x0": left, "x1": right, "top": top, "bottom": bottom, "doctop": top,
                          "width": right - left, "height": bottom - top, "orientation": "h" if horizontal else "v",
                          "object_type": "rect_edge" if kind in ("re", "qu") else "line"})
    return edges


def _plumber_fallback(path: Path, options: LoaderOptions, out: Collector) -> int:
    """PyMuPDF found no pages (e.g. unreadable /Pages tree): pdfminer's lenient parser sometimes can."""
    import pdfplumber

    try:
        with pdfplumber.open(path, password="") as pdf:
            n = len(pdf.pages)
            for i, page in enumerate(pdf.pages[: options.max_pages], start=1):
                text = _CID.sub("", page.dedupe_chars().extract_text() or "")
                out.add(_dedupe_lines(text), page=i)
                if out.full:
                    break
            return n
    except Exception as exc:
        raise LoadError(f"damaged PDF: no readable pages ({type(exc).__name__})") from None


def load_pdf(path: Path, options: LoaderOptions) -> LoadedFile:
    out = Collector(options)
    doc = _open(path)
    try:
        n_pages = doc.page_count
        if n_pages == 0:
            n = _plumber_fallback(path, options, out)
            return out.finish(pages=n, empty_reason="damaged PDF: no readable pages")
        if n_pages > options.max_pages:
            out.warnings.append(f"only the first {options.max_pages} of {n_pages} pages were read")
        title = None
        no_text_pages = 0
        ocr_failed = 0
        for index in range(min(n_pages, options.max_pages)):
            if out.full:
                break
            number = index + 1
            try:
                page = doc[index]
                text = clean_text(_dedupe_lines(page.get_text()))
            except Exception as exc:  # one bad page must not lose the rest
                out.warnings.append(f"page {number}: unreadable ({str(exc)[:80]})")
                continue
            if index == 0:
                title = _title(doc, page)
            if _needs_ocr(page, text):
                no_text_pages += not text
                if options.ocr and out.time_left() > 0:
                    try:
                        ocr = _ocr_page(page)
                    except Exception as exc:
                        ocr, ocr_failed = "", ocr_failed + 1
                        out.warnings.append(f"page {number}: OCR failed ({type(exc).__name__})")
                    if ocr:
                        text = _merge_ocr(text, ocr)
                        out.ocr_pages.append(number)
                elif options.ocr:
                    out.warnings.append(f"page {number}: OCR skipped (time limit)")
            out.add(text, page=number)
            if text:
                try:
                    drawings = page.get_cdrawings()
                    found = _ruled_tables(page, drawings) if _may_have_ruled_table(drawings) else []
                except Exception:  # tables are a bonus; the page text is already in
                    found = []
                for t_index, rows in enumerate(found):
                    add_table(out, rows, page=number, meta={"table": t_index + 1})
        if not out.docs and no_text_pages:
            if not options.ocr:
                raise LoadError("no text layer (scanned PDF) and OCR is turned off")
            raise LoadError("no text layer (scanned PDF) and OCR found no text")
        return out.finish(title=title, pages=n_pages, empty_reason="empty: no text found in PDF")
    finally:
        doc.close()
