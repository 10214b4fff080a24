"""Offline OCR with RapidOCR (PP-OCRv4 Chinese+English models ship inside the wheel)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from kb.loaders.base import Collector, LoaderOptions
from kb.types import LoadedFile, LoadError

MAX_SIDE = 4000  # larger images are scaled down first (RapidOCR resizes to <= 2000 px anyway)
IMAGE_MAX_PIXELS = 150_000_000  # Pillow decompression-bomb guard

_engine: Any = None
_lock = threading.Lock()


def engine() -> Any:
    """One RapidOCR engine per process, created on first use (model load takes ~1-2 s)."""
    global _engine
    with _lock:
        if _engine is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from rapidocr_onnxruntime import RapidOCR

            threads = max(1, min(2, os.cpu_count() or 1))
            _engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)
        return _engine


def ocr_array(img: Any) -> str:
    """OCR an RGB/grey uint8 numpy image; returns text lines in reading order ('' if none)."""
    result, _ = engine()(img)
    if not result:
        return ""
    # result: [[box(4 points), text, score], ...]; group boxes whose vertical centres are close into lines.
    items = []
    for box, text, _score in result:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        items.append((min(ys), max(ys), min(xs), str(text).strip()))
    items.sort(key=lambda it: (it[0], it[2]))
    lines: list[list[tuple[float, float, float, str]]] = []
    for it in items:
        if lines:
            last = lines[-1]
            top, bottom = min(i[0] for i in last), max(i[1] for i in last)
            centre = (it[0] + it[1]) / 2
            if top <= centre <= bottom and (it[1] - it[0]) < 2.5 * (bottom - top):
                last.append(it)
                continue
        lines.append([it])
    return "\n".join(" ".join(i[3] for i in sorted(line, key=lambda i: i[2]) if i[3]) for line in lines).strip()


def pil_to_array(im: Any) -> Any:
    import numpy as np

    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if max(im.size) > MAX_SIDE:
        scale = MAX_SIDE / max(im.size)
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
    if im.mode == "L":
        im = im.convert("RGB")
    return np.asarray(im)


def load_image(path: Path, options: LoaderOptions) -> LoadedFile:
    if not options.ocr:
        raise LoadError("image needs OCR, which is turned off")
    from PIL import Image, ImageSequence

    Image.MAX_IMAGE_PIXELS = IMAGE_MAX_PIXELS
    out = Collector(options)
    try:
        im = Image.open(path)
        im.load()
    except Image.DecompressionBombError:
        raise LoadError("refused: image too large (decompression bomb)") from None
    except Exception as exc:  # Pillow raises many types for bad images
        raise LoadError(f"not a readable image ({type(exc).__name__})") from None
    frames = 0
    for index, frame in enumerate(ImageSequence.Iterator(im), start=1):  # multi-page TIFF
        if index > options.max_pages:
            out.warnings.append(f"only the first {options.max_pages} frames were read")
            break
        if out.time_left() <= 0:
            out.warnings.append(f"OCR stopped after {frames} frames (time limit)")
            break
        frames = index
        text = ocr_array(pil_to_array(frame))
        if text:
            out.add(text, page=index, meta={"ocr": True})
            out.ocr_pages.append(index)
    return out.finish(pages=frames, empty_reason="no text found in image (OCR)")
