"""Document loading: any supported file -> LoadedFile (list of Documents) or LoadError.

Public API (used by the ingest pipeline, CLI and API):
    SUPPORTED_EXTENSIONS, LoaderOptions, load_file(), load_file_isolated()
Heavy libraries (PyMuPDF, RapidOCR, openpyxl, ...) are imported inside the loaders, so importing
this package is cheap.
"""

from __future__ import annotations

from pathlib import Path

from kb.loaders.base import LoaderOptions, ext_of
from kb.types import LoadedFile, LoadError

TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".log", ".json"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml", ".xml"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".xlsx"})
OFFICE_EXTENSIONS = frozenset({".docx", ".pptx", ".epub"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
BUNDLE_EXTENSION = ".kbdocs"  # already-extracted documents (kb.loaders.bundle: LangChain Documents)
SUPPORTED_EXTENSIONS: frozenset[str] = (
    TEXT_EXTENSIONS | HTML_EXTENSIONS | TABLE_EXTENSIONS | OFFICE_EXTENSIONS | IMAGE_EXTENSIONS
    | {".pdf", BUNDLE_EXTENSION}
)
# Formats we recognise but cannot read: a specific hint beats "unsupported file type".
_LEGACY = {".doc": "legacy Word .doc is not supported: convert it to .docx",
           ".xls": "legacy Excel .xls is not supported: convert it to .xlsx",
           ".ppt": "legacy PowerPoint .ppt is not supported: convert it to .pptx",
           ".odt": "OpenDocument .odt is not supported: save it as .docx",
           ".ods": "OpenDocument .ods is not supported: save it as .xlsx",
           ".odp": "OpenDocument .odp is not supported: save it as .pptx"}


def parse_cost(name: str) -> int:
    """How slow a format is to parse per chunk it yields, as a rank: plain text and markup 0, Office 1, PDF 2,
    images (OCR) 3. Ingestion parses cheap files first so the embedder has work while the slow ones parse."""
    ext = ext_of(Path(name), None)
    if ext in IMAGE_EXTENSIONS:
        return 3
    if ext == ".pdf":
        return 2
    return 1 if ext in OFFICE_EXTENSIONS or ext == ".xlsx" else 0


__all__ = ["SUPPORTED_EXTENSIONS", "LoadError", "LoadedFile", "LoaderOptions", "load_file", "load_file_isolated",
           "parse_cost"]


def precheck(path: Path, name: str | None, options: LoaderOptions) -> str:
    """Cheap checks shared by load_file and load_file_isolated; returns the extension to load as."""
    ext = ext_of(path, name)
    if ext in (".doc", ".xls", ".ppt"):
        try:  # a modern OOXML file saved under the old extension loads fine as such
            with open(path, "rb") as fh:
                if fh.read(4) == b"PK\x03\x04":
                    ext += "x"
        except OSError:
            pass
    if ext not in SUPPORTED_EXTENSIONS:
        if ext in _LEGACY:
            raise LoadError(_LEGACY[ext])
        raise LoadError(f"unsupported file type {ext}" if ext else "unsupported file type (no extension)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LoadError(f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    if not path.is_file():
        raise LoadError("not a regular file")
    if size == 0:
        raise LoadError("empty file")
    if size > options.max_file_mb * 1024 * 1024:
        raise LoadError(f"too large: {size / 2**20:.1f} MB > limit {options.max_file_mb} MB")
    return ext


def _dispatch(path: Path, ext: str, options: LoaderOptions) -> LoadedFile:
    if ext == ".pdf":
        from kb.loaders.pdf import load_pdf

        return load_pdf(path, options)
    if ext in (".csv", ".tsv"):
        from kb.loaders.tables import load_csv

        return load_csv(path, ext, options)
    if ext in HTML_EXTENSIONS:
        from kb.loaders.html import load_html

        return load_html(path, ext, options)
    if ext == BUNDLE_EXTENSION:
        from kb.loaders.bundle import load_bundle

        return load_bundle(path, options)
    if ext in TEXT_EXTENSIONS:
        from kb.loaders.text import load_text

        return load_text(path, ext, options)
    if ext in IMAGE_EXTENSIONS:
        from kb.loaders.sniff import describe, head

        what = describe(head(path)) or ""
        if not what.endswith("image") or "GIF" in what:
            raise LoadError(f"not an image file{f' (looks like {what})' if what else ''}")
        from kb.loaders.ocr import load_image

        return load_image(path, options)
    # zip containers: validate (and refuse zip bombs) before any parser opens them
    from kb.loaders.sniff import check_zip_container

    check_zip_container(path, ext)
    if ext == ".docx":
        from kb.loaders.office import load_docx

        return load_docx(path, options)
    if ext == ".pptx":
        from kb.loaders.office import load_pptx

        return load_pptx(path, options)
    if ext == ".xlsx":
        from kb.loaders.tables import load_xlsx

        return load_xlsx(path, options)
    if ext == ".epub":
        from kb.loaders.epub import load_epub

        return load_epub(path, options)
    raise LoadError(f"unsupported file type {ext}")


def load_file(path: Path, *, name: str | None = None, options: LoaderOptions | None = None) -> LoadedFile:
    """Load one file in-process. Raises LoadError (short, user-facing reason) on any failure."""
    options = options or LoaderOptions()
    path = Path(path)
    try:
        ext = precheck(path, name, options)
        return _dispatch(path, ext, options)
    except LoadError as exc:
        # Libraries quote the path they opened: show the user's file name, never a server temp path.
        reason = exc.reason.replace(str(path), name or path.name)
        if reason == exc.reason:
            raise
        raise LoadError(reason) from None
    except MemoryError:
        raise LoadError("too large to load in memory") from None
    except RecursionError:
        raise LoadError("too deeply nested to load") from None
    except Exception as exc:  # the contract: only LoadError leaves this function
        label = ext_of(path, name).lstrip(".").upper() or "file"
        message = str(exc).replace(str(path), name or path.name).strip()
        detail = message.splitlines()[0][:150] if message else ""
        raise LoadError(f"damaged {label} file: {type(exc).__name__}{': ' + detail if detail else ''}") from None


def load_file_isolated(path: Path, *, name: str | None = None, options: LoaderOptions | None = None) -> LoadedFile:
    """Like load_file, but in a child process with a time and memory limit (see kb.loaders.isolate)."""
    from kb.loaders.isolate import run_isolated

    options = options or LoaderOptions()
    precheck(Path(path), name, options)
    return run_isolated(Path(path), name, options)
