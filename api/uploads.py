"""Streaming multipart upload: each file part goes straight to a randomly named file in ``tmp_dir``.

Nothing is buffered in memory and no second copy is made (Starlette's form parser would spool every part to
an anonymous temp file first). The request-size limit is enforced while the body streams in by
``api.security.AccessGuard``; any failure here deletes what was written so far.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import APIError

FILE_FIELDS = {"files", "file"}
MAX_FILES = 500
MAX_HEADER_BYTES = 8192


@dataclass
class Upload:
    path: Path  # random temp name
    name: str  # the user's original file name (sanitised later by the KB service)
    size: int = 0


@dataclass
class _State:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    header_bytes: int = 0
    out: BinaryIO | None = None
    current: Upload | None = None


def _cleanup(uploads: list[Upload]) -> None:
    for u in uploads:
        u.path.unlink(missing_ok=True)


async def receive_uploads(request: Request, tmp_dir: Path) -> list[Upload]:
    """Save every file part of a multipart/form-data body (field ``files`` or ``file``); return them in order."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise APIError(415, "upload files as multipart/form-data (field name 'files')", "unsupported_media_type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(400, "multipart body without a boundary", "invalid_upload")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    uploads: list[Upload] = []
    st = _State()

    def on_part_begin() -> None:
        st.headers, st.current, st.out, st.header_bytes = {}, None, None, 0

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st.header_field += data[start:end]
        st.header_bytes += end - start
        if st.header_bytes > MAX_HEADER_BYTES:
            raise APIError(400, "multipart part headers too large", "invalid_upload")

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st.header_value += data[start:end]
        st.header_bytes += end - start
        if st.header_bytes > MAX_HEADER_BYTES:
            raise APIError(400, "multipart part headers too large", "invalid_upload")

    def on_header_end() -> None:
        st.headers[bytes(st.header_field).lower()] = bytes(st.header_value)
        st.header_field.clear()
        st.header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(st.headers.get(b"content-disposition", b""))
        field_name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if field_name not in FILE_FIELDS or filename is None:
            return  # other form fields are ignored (and not stored)
        if len(uploads) >= MAX_FILES:
            raise APIError(400, f"too many files in one request (at most {MAX_FILES})", "too_many_files")
        upload = Upload(tmp_dir / f"upload-{secrets.token_hex(16)}", filename.decode("utf-8", "replace"))
        uploads.append(upload)
        st.current = upload
        # Synchronous writes of ~64 KB chunks go to the page cache; cheap enough for the event loop.
        st.out = open(upload.path, "xb")  # closed in on_part_end or the finally below

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if st.out is not None and st.current is not None:
            st.out.write(data[start:end])
            st.current.size += end - start

    def on_part_end() -> None:
        if st.out is not None:
            st.out.close()
        st.out, st.current = None, None

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        _cleanup(uploads)
        raise APIError(400, f"malformed multipart body: {e}", "invalid_upload") from None
    except BaseException:
        _cleanup(uploads)
        raise
    finally:
        if st.out is not None:
            st.out.close()
    if not uploads:
        raise APIError(400, "no files in the request: send them as multipart field 'files'", "no_files")
    return uploads
