"""Ingestion speed on real documents from ../shared/data/documents.

    python -m bench.ingest [--embedding-model minilm]

Indexes the Chinese knowledge-base folder (markdown, txt, PDF) and the Chinese PDFs into a
temporary KB and reports files, chunks, seconds and chunks/s.
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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        settings = load_settings(data_dir=tmp, embedding_model=args.embedding_model)
        manager = KnowledgeBaseManager(settings)
        manager.embedder()  # model load is start-up cost, not ingestion
        kb = manager.create("bench")
        files = sorted(f for d in args.folders for f in (DOCS / d).iterdir() if f.is_file())
        size = sum(f.stat().st_size for f in files)
        t = time.perf_counter()
        results = kb.ingest(files)
        dt = time.perf_counter() - t
        chunks = sum(r.chunks for r in results)
        print(f"model={settings.embedding_model} files={len(files)} ({size / 2**20:.1f} MB) "
              f"indexed={sum(r.status == 'indexed' for r in results)} chunks={chunks} "
              f"seconds={dt:.1f} chunks/s={chunks / dt:.1f}")
        for r in results:
            print("  " + r.message())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
