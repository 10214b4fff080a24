"""Citations you can open: a source's original file, and a preview of the place it cites.

A PDF source previews as its page rendered by PyMuPDF with the cited chunk's text highlighted; every other
format as the cited chunk among its neighbours. Rendering runs in a child process with the loaders' time and
memory limits: the file came from a user, and a PDF that hangs or crashes MuPDF must not take the server.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from kb.db import ChunkRow, FileRow
from kb.loaders.base import LoaderOptions
from kb.loaders.isolate import child_env, enter_child, kill_child
from kb.types import KBError, KBNotFound

if TYPE_CHECKING:
    from kb.service import KnowledgeBase

CONTEXT_CHUNKS = 2  # neighbours shown on each side of a cited chunk (text formats)
ZOOM = 1.5  # page render scale: ~108 dpi, readable and small
MAX_PHRASES = 40
RENDER_TIMEOUT_S = 60  # one page; a viewer waiting longer has given up


def find_file(kb: KnowledgeBase, file_id: str) -> FileRow:
    """An indexed file of the KB by sha256 (a source's ``file_id``) or row id."""
    with kb.db.read() as s:
        q = select(FileRow).where(FileRow.kb_id == kb.id, FileRow.status == "indexed")
        by_id = file_id.isdigit() and len(file_id) <= 18  # a row id (64-bit), else a sha256
        q = q.where(FileRow.id == int(file_id)) if by_id else q.where(FileRow.sha256 == file_id)
        row = s.scalars(q.order_by(FileRow.id)).first()
        if row is None:
            raise KBNotFound(f"no file '{file_id}' in knowledge base '{kb.name}'")
        s.expunge(row)
        return row


def original(kb: KnowledgeBase, file_id: str) -> tuple[str, bytes, str]:
    """(name, bytes, media type) of the file as it was uploaded."""
    f = find_file(kb, file_id)
    media = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
    return f.name, kb.manager.read_blob(f.sha256 or ""), media


def _is_pdf(name: str, data: bytes) -> bool:
    return name.lower().endswith(".pdf") or data[:1024].find(b"%PDF") >= 0


def preview(kb: KnowledgeBase, file_id: str, chunk_id: int | None = None) -> dict[str, Any]:
    """What to show for a source: for a PDF the page to render (``image``: its URL path), for other formats
    the cited chunk with its neighbours (``context``: [{text, cited}])."""
    f = find_file(kb, file_id)
    generation = kb.row().generation
    with kb.db.read() as s:
        chunk = None
        if chunk_id is not None:
            chunk = s.get(ChunkRow, chunk_id)
            if chunk is None or chunk.file_id != f.id:
                raise KBNotFound(f"no chunk {chunk_id} in file '{f.name}'")
        context: list[dict[str, Any]] = []
        if chunk is not None:
            near = s.scalars(select(ChunkRow).where(
                ChunkRow.file_id == f.id, ChunkRow.generation == chunk.generation,
                ChunkRow.ordinal.between(chunk.ordinal - CONTEXT_CHUNKS, chunk.ordinal + CONTEXT_CHUNKS))
                .order_by(ChunkRow.ordinal))
            context = [{"text": c.text, "cited": c.id == chunk.id} for c in near]
        page = chunk.page if chunk is not None else None
    is_pdf = (f.pages or 0) > 0 and f.name.lower().endswith(".pdf")
    out: dict[str, Any] = {"kb": kb.name, "file": f.name, "file_id": f.sha256, "pages": f.pages,
                           "page": page, "chunk_id": chunk_id, "kind": "pdf" if is_pdf else "text",
                           "context": context, "generation": generation,
                           "download": f"/api/files/{kb.name}/{f.sha256}"}
    if is_pdf:
        query = f"?chunk={chunk_id}" if chunk_id is not None else ""
        out["image"] = f"/api/files/{kb.name}/{f.sha256}/pages/{page or 1}.png{query}"
    return out


def phrases(text: str) -> list[str]:
    """Pieces of a chunk to find on its page: its lines (PDF text is extracted line by line, and the chunk
    keeps those breaks), long ones cut, short ones dropped (a 2-character hit would light up half the page)."""
    out: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        for i in range(0, len(line), 40):
            piece = line[i:i + 40].strip()
            if len(piece) >= 6:
                out.append(piece)
    return out[:MAX_PHRASES]


def page_png(kb: KnowledgeBase, file_id: str, page: int, chunk_id: int | None = None) -> bytes:
    """PNG of one PDF page (1-based), the cited chunk's text highlighted."""
    name, data, _ = original(kb, file_id)
    if not _is_pdf(name, data):
        raise KBError(f"'{name}' is not a PDF: it has no pages to render")
    marks: list[str] = []
    if chunk_id is not None:
        with kb.db.read() as s:
            chunk = s.get(ChunkRow, chunk_id)
            if chunk is None:
                raise KBNotFound(f"no chunk {chunk_id}")
            marks = phrases(chunk.text)
    s = kb.settings
    request = json.dumps({"pdf": base64.b64encode(data).decode(), "page": page, "phrases": marks,
                          "max_memory_mb": LoaderOptions().max_memory_mb}).encode()
    proc = subprocess.Popen([sys.executable, "-m", "kb.preview"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=child_env(), start_new_session=True)
    try:
        out, _ = proc.communicate(request, timeout=min(RENDER_TIMEOUT_S, s.file_timeout_s))
    except subprocess.TimeoutExpired:
        kill_child(proc)
        raise KBError(f"rendering page {page} of '{name}' timed out") from None
    except BaseException:
        kill_child(proc)
        raise
    try:
        reply = json.loads(out)
    except ValueError:
        raise KBError(f"rendering page {page} of '{name}' failed (exit code {proc.returncode})") from None
    if "error" in reply:
        raise KBError(reply["error"])
    return base64.b64decode(reply["png"])


def _render(pdf: bytes, page: int, marks: list[str]) -> dict[str, str]:
    import pymupdf

    doc = pymupdf.open(stream=pdf, filetype="pdf")
    if doc.needs_pass and not doc.authenticate(""):
        return {"error": "encrypted: password required"}
    if not 1 <= page <= doc.page_count:
        return {"error": f"page {page} does not exist: the file has {doc.page_count} pages"}
    p = doc[page - 1]
    rects = [r for m in marks for r in p.search_for(m)]
    if rects:
        p.add_highlight_annot(rects)
    png = p.get_pixmap(matrix=pymupdf.Matrix(ZOOM, ZOOM), annots=True).tobytes("png")
    return {"png": base64.b64encode(png).decode(), "highlights": str(len(rects))}


def _child() -> None:
    request = json.loads(sys.stdin.buffer.read())
    result = enter_child(int(request["max_memory_mb"]))
    try:
        reply = _render(base64.b64decode(request["pdf"]), int(request["page"]), list(request["phrases"]))
    except MemoryError:
        reply = {"error": "too large to render in memory"}
    except Exception as e:  # MuPDF raises generic errors for damaged files
        reply = {"error": f"cannot render this page: {str(e)[:120]}"}
    with result:
        result.write(json.dumps(reply).encode())
        result.flush()
    import os

    os._exit(0)


if __name__ == "__main__":
    _child()
