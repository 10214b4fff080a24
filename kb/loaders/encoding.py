"""Decode bytes of unknown encoding: BOMs, BOM-less UTF-16/32, UTF-8, then charset-normalizer.

Chinese legacy encodings are widened to their supersets (GB2312/GBK -> GB18030, Big5 -> CP950 /
Big5-HKSCS when plain Big5 fails) and EUC-TW, which Python has no codec for, goes through glibc iconv.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import re

from kb.types import LoadError

_BOMS = [  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
# charset-normalizer names -> the codec we really decode with (supersets decode strictly more files).
_WIDEN = {"gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "euc_cn": "gb18030", "hz": "gb18030",
          "big5": "big5", "shift_jis": "cp932", "euc_kr": "cp949", "ascii": "utf-8", "utf_8": "utf-8"}
_FALLBACKS = {"big5": ["cp950", "big5hkscs"], "gb18030": [], "cp932": ["shift_jis"], "cp949": ["euc_kr"]}
_DECLARED = re.compile(rb"""(?:charset|encoding)\s*=\s*["']?\s*([A-Za-z0-9_.:-]{2,40})""", re.I)


def _nul_pattern_encoding(data: bytes) -> str | None:
    """Guess BOM-less UTF-16/32 from where NUL bytes sit (ASCII-heavy text has 1 or 3 NULs per char)."""
    sample = data[:8192]
    n = len(sample) // 4 * 4
    if n < 8 or b"\x00" not in sample:
        return None
    zeros = [sum(1 for i in range(k, n, 4) if sample[i] == 0) / (n / 4) for k in range(4)]
    if zeros[1] > 0.7 and zeros[2] > 0.7 and zeros[3] > 0.7 and zeros[0] < 0.3:
        return "utf-32-le"
    if zeros[0] > 0.7 and zeros[1] > 0.7 and zeros[2] > 0.7 and zeros[3] < 0.3:
        return "utf-32-be"
    odd, even = (zeros[1] + zeros[3]) / 2, (zeros[0] + zeros[2]) / 2
    if odd > 0.15 and even < 0.03:
        return "utf-16-le"
    if even > 0.15 and odd < 0.03:
        return "utf-16-be"
    return None


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def iconv_decode(data: bytes, encoding: str) -> str | None:
    """Decode with glibc iconv (for EUC-TW, which Python lacks). None if unavailable or invalid."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.iconv_open.restype = ctypes.c_void_p
        libc.iconv_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.iconv.restype = ctypes.c_size_t
        libc.iconv.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t),
                               ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
        libc.iconv_close.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    cd = libc.iconv_open(b"UTF-8", encoding.encode("ascii"))
    if cd is None or cd == ctypes.c_void_p(-1).value:
        return None
    try:
        in_buf = ctypes.create_string_buffer(data, len(data))
        out_size = len(data) * 4 + 16
        out_buf = ctypes.create_string_buffer(out_size)
        in_ptr, in_left = ctypes.cast(in_buf, ctypes.c_char_p), ctypes.c_size_t(len(data))
        out_ptr, out_left = ctypes.cast(out_buf, ctypes.c_char_p), ctypes.c_size_t(out_size)
        rc = libc.iconv(cd, ctypes.byref(in_ptr), ctypes.byref(in_left), ctypes.byref(out_ptr), ctypes.byref(out_left))
        if rc == ctypes.c_size_t(-1).value and in_left.value > 4:  # allow a truncated last character
            return None
        return out_buf.raw[: out_size - out_left.value].decode("utf-8", "replace")
    finally:
        libc.iconv_close(cd)


def _widened(encoding: str) -> str:
    enc = codecs.lookup(encoding).name.replace("-", "_")
    return _WIDEN.get(enc, _WIDEN.get(encoding.lower().replace("-", "_"), enc))


def _decode_as(data: bytes, encoding: str) -> tuple[str, str] | None:
    try:
        enc = _widened(encoding)
    except LookupError:
        return None
    for candidate in [enc, *_FALLBACKS.get(enc, [])]:
        text = _strict(data, candidate)
        if text is not None:
            return text, candidate
    return None


def declared_encoding(data: bytes) -> str | None:
    """charset / encoding declared in the first bytes of an HTML or XML file."""
    m = _DECLARED.search(data[:2048])
    return m.group(1).decode("ascii").lower() if m else None


_BINARY_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Return (text, encoding name). Raises LoadError for content that is clearly not text."""
    text, encoding = _decode(data, declared)
    sample = text[:100_000]
    if sample and len(_BINARY_CHARS.findall(sample)) > 0.05 * len(sample):
        raise LoadError("not a text file (binary content)")
    return text, encoding


def _decode(data: bytes, declared: str | None) -> tuple[str, str]:
    for bom, enc in _BOMS:
        if data.startswith(bom):
            text = _strict(data, enc)
            if text is not None:
                return text, enc.replace("-sig", "") + " (BOM)"
    enc = _nul_pattern_encoding(data)
    if enc:
        text = _strict(data[: len(data) // (4 if "32" in enc else 2) * (4 if "32" in enc else 2)], enc)
        if text is not None:
            return text, enc
    if declared and declared not in ("utf-8", "utf8"):
        hit = _decode_as(data, declared)
        if hit:
            return hit
    text = _strict(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    binary = data[:8192].count(b"\x00") > len(data[:8192]) // 10

    from charset_normalizer import from_bytes  # heavy-ish import, only for non-UTF-8 input

    best = from_bytes(data[:400_000]).best()
    if best is not None:
        hit = _decode_as(data, best.encoding)
        if hit:
            text, enc = hit
            # cp1250 and cp1252 agree on most Western text; call it the far more common cp1252 then.
            if enc == "cp1250" and _strict(data, "cp1252") == text:
                enc = "cp1252"
            return text, enc
    if binary:
        raise LoadError("not a text file (binary content)")
    # charset-normalizer gives up on EUC-TW (no Python codec): try it before the lenient fallbacks.
    text = iconv_decode(data, "EUC-TW")
    if text is not None and _looks_cjk(text):
        return text, "euc-tw"
    for enc in ("gb18030", "big5", "cp950", "cp1252"):
        text = _strict(data, enc)
        if text is not None:
            return text, enc
    return data.decode("utf-8", "replace"), "utf-8 (with errors)"


def _looks_cjk(text: str) -> bool:
    han = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    return han > 0.2 * max(1, sum(1 for ch in text if not ch.isascii()))
