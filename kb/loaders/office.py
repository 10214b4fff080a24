"""DOCX (python-docx) and PPTX (python-pptx). Both are zip containers checked by sniff first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kb.loaders.base import Collector, LoaderOptions
from kb.loaders.tables import add_table
from kb.types import LoadedFile

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_BLIP = "{http://schemas.openxmlformats.org/drawingml/2006/main}blip"
_R_EMBED = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}embed"
OCR_IMAGES_BELOW_CHARS = 300  # documents with less body text than this get their pictures OCR'd
MAX_OCR_IMAGES = 30
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_HEADING_STYLE = re.compile(r"^(?:heading|标题|titre|überschrift|titolo|título|見出し)\s*(\d)$", re.I)


def _q(tag: str) -> str:
    return f"{{{_W}}}{tag}"


def _heading_level(paragraph: Any) -> int | None:
    """0 for Title, 1..9 for Heading N (by style name or outline level), None for body text."""
    try:
        style = paragraph.style
    except Exception:  # broken style references exist in the wild
        style = None
    name = (style.name or "").strip() if style is not None else ""
    if name.lower() in ("title", "标题"):
        return 0
    m = _HEADING_STYLE.match(name)
    if m:
        return int(m.group(1))
    ppr = paragraph._p.pPr
    lvl = ppr.find(_q("outlineLvl")) if ppr is not None else None
    if lvl is not None:
        try:
            value = int(lvl.get(_q("val")))
            return value + 1 if value < 9 else None
        except (TypeError, ValueError):
            return None
    return None


def _where(el: Any, p_el: Any) -> str:
    """'fallback' (duplicate VML copy), 'textbox' or 'body' for an element inside paragraph p_el."""
    where = "body"
    for anc in el.iterancestors():
        if anc is p_el:
            break
        if anc.tag == _MC_FALLBACK:
            return "fallback"
        if anc.tag == _q("txbxContent"):
            where = "textbox"
    return where


def _paragraph_segments(p_el: Any, rendered: bool) -> list[str]:
    """Text of a <w:p> in run order (incl. hyperlinks, fields, text boxes), split at page breaks.

    ``rendered``: the file carries Word's w:lastRenderedPageBreak markers, which match the real layout
    better than explicit breaks (an explicit break is followed by one of them anyway). Text boxes
    (w:txbxContent) appear twice in files with an mc:AlternateContent VML fallback; only the mc:Choice
    copy is read."""
    segments: list[list[str]] = [[]]
    ppr = p_el.find(_q("pPr"))
    if not rendered and ppr is not None and ppr.find(_q("pageBreakBefore")) is not None:
        segments.append([])
    tags = (_q("t"), _q("tab"), _q("br"), _q("cr"), _q("lastRenderedPageBreak"), _q("p"), _q("noBreakHyphen"))
    for el in p_el.iter(*tags):
        if el is p_el:
            continue
        where = _where(el, p_el)
        if where == "fallback":
            continue
        in_box = where == "textbox"
        tag = el.tag
        if tag == _q("t"):
            segments[-1].append(el.text or "")
        elif tag == _q("tab"):
            segments[-1].append("\t")
        elif tag == _q("noBreakHyphen"):
            segments[-1].append("-")
        elif tag == _q("p"):  # paragraph inside a text box
            segments[-1].append("\n")
        elif tag == _q("lastRenderedPageBreak"):
            if rendered and not in_box:
                segments.append([])
        elif el.get(_q("type")) == "page" and not in_box:
            if not rendered:
                segments.append([])
        else:
            segments[-1].append("\n")
    return ["".join(seg) for seg in segments]


def _section_types(body: Any) -> list[str]:
    """Start type of every section in order (nextPage, oddPage, evenPage, continuous).

    A w:sectPr closes its section, but its w:type says how *that* section starts, so the break after
    section k is described by section k+1's w:sectPr (the last one is the body's own)."""
    types = []
    for sect in body.iter(_q("sectPr")):
        kind = sect.find(_q("type"))
        types.append(kind.get(_q("val"), "nextPage") if kind is not None else "nextPage")
    return types


def _ends_section(p_el: Any) -> bool:
    ppr = p_el.find(_q("pPr"))
    return ppr is not None and ppr.find(_q("sectPr")) is not None


def load_docx(path: Path, options: LoaderOptions) -> LoadedFile:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(str(path))
    out = Collector(options)
    body = document.element.body
    stack: list[tuple[int, str]] = []
    buf: list[str] = []
    page = 1

    def heading_path() -> str | None:
        return " > ".join(t for _, t in stack) or None

    def flush() -> None:
        if buf:
            out.add("\n".join(buf), page=page, heading=heading_path())
            buf.clear()

    # Body children in document order; w:sdt (content controls) wrap paragraphs/tables too.
    def children(el: Any):
        for child in el.iterchildren():
            if child.tag == _q("sdt"):
                content = child.find(_q("sdtContent"))
                if content is not None:
                    yield from children(content)
            else:
                yield child

    rendered = next(body.iter(_q("lastRenderedPageBreak")), None) is not None
    pending_section: str | None = None  # a section break waiting for the next page advance
    section_types = _section_types(body)
    images: list[tuple[int, str]] = []  # (page, relationship id) of pictures, in document order
    section_index = 0

    def advance() -> None:
        nonlocal page, pending_section
        flush()
        page += 1
        # odd/even-page sections skip a blank page when the next page has the wrong parity
        if (pending_section == "oddPage" and page % 2 == 0) or (pending_section == "evenPage" and page % 2 == 1):
            page += 1
        pending_section = None

    for el in children(body):
        if out.full:
            break
        if el.tag == _q("p"):
            for blip in el.iter(_BLIP):
                if blip.get(_R_EMBED) and _where(blip, el) != "fallback":
                    images.append((page, blip.get(_R_EMBED)))
            segments = _paragraph_segments(el, rendered)
            text = "".join(segments)
            level = _heading_level(Paragraph(el, document)) if text.strip() else None
            if level is not None:
                flush()
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text.strip()[:200]))
            for i, segment in enumerate(segments):
                if i:
                    advance()
                buf.append(segment)
            if _ends_section(el):
                section_index += 1
                section = section_types[section_index] if section_index < len(section_types) else "continuous"
                if section != "continuous":
                    pending_section = section
                    if not rendered:  # with rendered markers the next lastRenderedPageBreak advances
                        advance()
        elif el.tag == _q("tbl"):
            flush()
            table = Table(el, document)
            try:
                rows = [[cell.text for cell in row.cells] for row in table.rows]
            except Exception:  # irregular merged cells can confuse python-docx
                rows = [[tc.xpath("string(.)") for tc in tr.iterchildren(_q("tc"))] for tr in el.iterchildren(_q("tr"))]
            if not add_table(out, rows, page=page, heading=heading_path()):
                out.add("\n".join(" ".join(r) for r in rows), page=page, heading=heading_path())
            if rendered:  # a table crossing pages: later content starts on the table's last page
                for _ in el.iter(_q("lastRenderedPageBreak")):
                    advance()
    flush()
    if options.ocr and images and out.chars < OCR_IMAGES_BELOW_CHARS:
        _ocr_images(document, images, out)
    props = document.core_properties
    title = props.title or (next((t for lvl, t in stack if lvl == 0), None) if stack else None)
    if not title:
        title = next((d.heading.split(" > ")[0] for d in out.docs if d.heading), None)
    return out.finish(title=title, pages=page, empty_reason="empty: no text found in DOCX")


def _ocr_images(document: Any, images: list[tuple[int, str]], out: Collector) -> None:
    """OCR the pictures of a (nearly) text-less DOCX: scanned pages pasted into Word are common."""
    import io

    from PIL import Image

    from kb.loaders.ocr import IMAGE_MAX_PIXELS, ocr_array, pil_to_array

    Image.MAX_IMAGE_PIXELS = IMAGE_MAX_PIXELS
    seen: set[str] = set()
    for page, rid in images[:MAX_OCR_IMAGES]:
        if rid in seen or out.time_left() <= 0:
            continue
        seen.add(rid)
        try:
            blob = document.part.related_parts[rid].blob
            im = Image.open(io.BytesIO(blob))
            if min(im.size) < 32:  # icons and bullets
                continue
            text = ocr_array(pil_to_array(im))
        except Exception:  # EMF/WMF, broken or external images: skip
            continue
        if text:
            out.add(text, page=page, meta={"ocr": True, "image": rid})
            out.ocr_pages.append(page)


def _shape_texts(shapes: Any, out: Collector, slide_no: int, title: str | None) -> list[str]:
    texts: list[str] = []
    for shape in shapes:
        try:
            if shape.shape_type == 6 and hasattr(shape, "shapes"):  # MSO_SHAPE_TYPE.GROUP
                texts.extend(_shape_texts(shape.shapes, out, slide_no, title))
            elif getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                add_table(out, rows, page=slide_no, heading=title)
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                texts.append(shape.text_frame.text)
        except Exception:  # odd shapes (OLE, charts) are skipped, not fatal
            continue
    return texts


def load_pptx(path: Path, options: LoaderOptions) -> LoadedFile:
    import pptx

    prs = pptx.Presentation(str(path))
    out = Collector(options)
    slides = list(prs.slides)
    if len(slides) > options.max_pages:
        out.warnings.append(f"only the first {options.max_pages} of {len(slides)} slides were read")
    first_title = None
    for number, slide in enumerate(slides[: options.max_pages], start=1):
        if out.full:
            break
        title_shape = slide.shapes.title
        title = (title_shape.text_frame.text.strip() if title_shape is not None and title_shape.has_text_frame
                 else "") or None
        first_title = first_title or title
        texts = _shape_texts(slide.shapes, out, number, title)
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                texts.append("Notes: " + notes.text)
        out.add("\n".join(texts), page=number, heading=title)
    out.docs.sort(key=lambda d: d.page or 0)  # tables were added before their slide's text
    title = prs.core_properties.title or first_title
    return out.finish(title=title, pages=len(slides), empty_reason="empty: no text found in PPTX")
