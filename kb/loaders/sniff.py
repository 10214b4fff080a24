"""Content sniffing: catch files whose bytes contradict their extension, and zip bombs."""

from __future__ import annotations

import copy
import zipfile
import zlib
from pathlib import Path

from kb.types import LoadError

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

# Zip-bomb limits, checked before any parser touches the archive: first on the sizes the central directory
# declares, then on the bytes the entries really inflate to (declared sizes can lie).
ZIP_MAX_TOTAL = 500 * 1024 * 1024
ZIP_MAX_RATIO = 100
ZIP_RATIO_MIN_SIZE = 50 * 1024 * 1024
ZIP_MAX_ENTRIES = 20_000

# Top folder of each OOXML flavour's parts (the exact main part name may vary).
_OOXML_MAIN = {".docx": "word/", ".xlsx": "xl/", ".pptx": "ppt/"}
_OOXML_LABEL = {".docx": "DOCX", ".xlsx": "XLSX", ".pptx": "PPTX", ".epub": "EPUB"}
_LEGACY_HINT = {".docx": "legacy Word .doc: convert it to .docx", ".xlsx": "legacy Excel .xls: convert it to .xlsx",
                ".pptx": "legacy PowerPoint .ppt: convert it to .pptx"}
_ODF = {"application/vnd.oasis.opendocument.text": "OpenDocument .odt: save it as .docx",
        "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument .ods: save it as .xlsx",
        "application/vnd.oasis.opendocument.presentation": "OpenDocument .odp: save it as .pptx"}


def head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def describe(data: bytes) -> str | None:
    """A short name for well-known binary formats, or None if the bytes are not recognised."""
    if data.startswith(b"%PDF") or b"%PDF-" in data[:1024]:
        return "a PDF"
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive (Office/EPUB)"
    if data.startswith(OLE2_MAGIC):
        return "a legacy Office (OLE2) file"
    if data.startswith(b"\x89PNG"):
        return "a PNG image"
    if data.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "a WebP image"
    if data.startswith(b"\x7fELF") or data.startswith(b"MZ"):
        return "an executable"
    if data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"Rar!")):
        return "a compressed archive"
    if data.startswith(b"{\\rtf"):
        return "an RTF document"
    return None


def ole2_kind(path: Path) -> str:
    """Tell legacy .doc/.xls/.ppt and password-protected OOXML apart (their streams are named in UTF-16)."""
    with open(path, "rb") as fh:
        data = fh.read(2 * 1024 * 1024)

    def has(name: str) -> bool:
        return name.encode("utf-16-le") in data

    if has("EncryptedPackage"):
        return "encrypted"
    if has("WordDocument"):
        return "doc"
    if has("Workbook") or has("Book"):
        return "xls"
    if has("PowerPoint Document"):
        return "ppt"
    return "ole2"


def reject_ole2(path: Path, ext: str) -> None:
    """Raise the most helpful reason for an OLE2 container (legacy Office binary or encrypted OOXML)."""
    kind = ole2_kind(path)
    if kind == "encrypted":
        raise LoadError("encrypted: password required (password-protected Office file)")
    hints = {"doc": "legacy Word .doc: convert it to .docx", "xls": "legacy Excel .xls: convert it to .xlsx",
             "ppt": "legacy PowerPoint .ppt: convert it to .pptx"}
    label = _OOXML_LABEL.get(ext, ext.lstrip(".").upper())
    hint = hints.get(kind) or _LEGACY_HINT.get(ext, "legacy Office binary file")
    raise LoadError(f"not a {label} file ({hint})")


def check_zip_container(path: Path, ext: str) -> None:
    """Validate an OOXML/EPUB file before parsing: right container, right content, no zip bomb."""
    label = _OOXML_LABEL.get(ext, ext.lstrip(".").upper())
    data = head(path, 8)
    if not data:
        raise LoadError("empty file")
    if data.startswith(OLE2_MAGIC):
        reject_ole2(path, ext)
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        what = describe(head(path))
        raise LoadError(f"not a {label} file" + (f" (looks like {what})" if what else ""))
    packed = max(path.stat().st_size, 1)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > ZIP_MAX_ENTRIES:
                raise LoadError(f"refused: zip bomb ({len(infos):,} entries)")
            total = sum(i.file_size for i in infos)
            if _too_big(total, packed):
                raise LoadError(f"refused: zip bomb (uncompressed size {total / 2**20:,.0f} MB, "
                                f"ratio {total / packed:,.0f}:1)")
            _check_inflated_size(zf, infos, total, packed, label)
            names = {i.filename for i in infos}
            mimetype = zf.read("mimetype")[:100].decode("ascii", "replace").strip() if "mimetype" in names else ""
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise LoadError(f"damaged {label} file: {exc}") from None
    if mimetype in _ODF:
        raise LoadError(f"not a {label} file ({_ODF[mimetype]})")
    if ext == ".epub":
        if mimetype != "application/epub+zip" and "META-INF/container.xml" not in names:
            raise LoadError("not an EPUB file")
        return
    main = _OOXML_MAIN.get(ext)
    if main and not any(n.startswith(main) for n in names):
        found = next((e for e, m in _OOXML_MAIN.items() if any(n.startswith(m) for n in names)), None)
        if found:
            raise LoadError(f"not a {label} file (it is a {found.lstrip('.').upper()}: rename it to {found})")
        raise LoadError(f"not a {label} file")


def _too_big(size: int, packed: int) -> bool:
    return size > ZIP_MAX_TOTAL or (size > ZIP_RATIO_MIN_SIZE and size / packed > ZIP_MAX_RATIO)


def _check_inflated_size(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], declared: int, packed: int,
                         label: str) -> None:
    """Inflate every entry once, counting the bytes it really yields, and stop at the zip-bomb limits.

    A bomb can declare a small size over a deflate stream that inflates a thousandfold, so the declared
    sizes are not trusted: each entry is read to the real end of its data, in bounded blocks.
    """
    inflated = 0
    for info in infos:
        # OOXML and EPUB packages use only these two; other methods (bzip2, lzma) would inflate unbounded
        # in one zipfile read, so they are refused rather than probed.
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise LoadError(f"damaged {label} file: unsupported compression method {info.compress_type}")
        probe = copy.copy(info)
        probe.file_size = ZIP_MAX_TOTAL + 1  # zipfile stops at the declared size: make it never the limit
        with zf.open(probe) as fh:
            while block := fh.read(1 << 20):
                inflated += len(block)
                if _too_big(inflated, packed):
                    raise LoadError(f"refused: zip bomb (inflates to over {inflated / 2**20:,.0f} MB, "
                                    f"declares {declared / 2**20:,.0f} MB)")
