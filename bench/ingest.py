"""Ingestion speed on real documents from ../shared/data/documents, against the embedder's own speed.

    python -m bench.ingest [--embedding-model MODEL] [--folders md_kb_zh pdf_zh_text]

Indexes the folders into a temporary KB through the whole pipeline (loader processes, splitter, embedder,
index, database), records every batch of texts the embedder was given, then replays exactly those calls on
the bare embedder in the same run. ``ratio`` = pipeline chunks/s / raw embedder chunks/s: 1.0 means parsing,
splitting and storing cost nothing beside embedding. Also printed: the time before the first embedding call (the
first file's parse, which nothing can overlap) and the ratio from that call on. ``--threads 1`` leaves the
embedder one core and the parsers the other.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from configs.settings import load_settings
from kb.service import KnowledgeBaseManager

DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "documents"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedding-model")
    ap.add_argument("--folders", nargs="+", default=["md_kb_zh", "pdf_zh_text"])
    ap.add_argument("--no-ocr", action="store_true", help="skip OCR of scanned pages")
    ap.add_argument("--threads", type=int, help="the embedder's threads (n_threads); default: the settings'")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        extra: dict[str, object] = {"ocr": False} if args.no_ocr else {}
        if args.threads:
            extra["n_threads"] = args.threads
        settings = load_settings(data_dir=tmp, embedding_model=args.embedding_model, **extra)
        manager = KnowledgeBaseManager(settings)
        emb = manager.embedder()  # model load is start-up cost, not ingestion
        emb.encode_documents(["预热 warm-up"] * 8)
        manager.warm()  # so is what the app warms at start (a loader process, jieba's dictionary)
        calls: list[list[str]] = []
        first: list[float] = []  # when the first embedding call came
        real = emb.encode_documents

        def recording(texts):  # the same object the pipeline uses: record, then run the real model
            first.append(first[0] if first else time.perf_counter())
            calls.append(list(texts))
            return real(texts)

        emb.encode_documents = recording  # type: ignore[method-assign]
        kb = manager.create("bench")
        files = sorted(f for d in args.folders for f in (DOCS / d).iterdir() if f.is_file())
        size = sum(f.stat().st_size for f in files)
        t = time.perf_counter()
        results = kb.ingest(files)
        dt = time.perf_counter() - t
        wait = first[0] - t if first else dt  # parsing the first file: a fixed cost no pipeline can hide
        del emb.encode_documents
        chunks = sum(r.chunks for r in results)
        t = time.perf_counter()
        for texts in calls:
            emb.encode_documents(texts)
        raw = time.perf_counter() - t
        embedded = sum(len(c) for c in calls)
        print(f"model={settings.embedding_model} files={len(files)} ({size / 2**20:.1f} MB) "
              f"indexed={sum(r.status == 'indexed' for r in results)} chunks={chunks}")
        print(f"pipeline: {dt:.1f} s, {chunks / dt:.1f} chunks/s | raw embedder on the same {embedded} texts "
              f"({len(calls)} calls): {raw:.1f} s, {embedded / raw:.1f} chunks/s | "
              f"ratio {(chunks / dt) / (embedded / raw):.2f}")
        steady = (chunks / (dt - wait)) / (embedded / raw)
        print(f"first file parsed before any embedding: {wait:.1f} s; "
              f"from the first embedding call on: ratio {steady:.2f}")
        for r in results:
            print("  " + r.message())
        manager.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
