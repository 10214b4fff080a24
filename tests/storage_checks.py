"""What "DB and index agree" means, checked the same way after every test that writes or crashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import func, select

from kb.db import BlobRow, ChunkRow, FileRow
from kb.service import KnowledgeBase, KnowledgeBaseManager


def assert_consistent(manager: KnowledgeBaseManager, kb: KnowledgeBase) -> dict[str, int]:
    """The live index holds exactly the live generation's chunk rows; every indexed file has chunks and its
    bytes; counts on file rows match the chunk rows. Returns {file name: chunks}."""
    row = kb.row()
    with manager.db.read() as s:
        db_ids = set(s.scalars(select(ChunkRow.id).where(ChunkRow.kb_id == kb.id,
                                                         ChunkRow.generation == row.generation)))
        per_file = dict(s.execute(select(ChunkRow.file_id, func.count()).where(
            ChunkRow.kb_id == kb.id, ChunkRow.generation == row.generation).group_by(ChunkRow.file_id)).tuples().all())
        files = list(s.scalars(select(FileRow).where(FileRow.kb_id == kb.id)))
        blobs = set(s.scalars(select(BlobRow.sha256)))
    index_ids = set(manager.index.ids(row.index_name()).tolist())
    assert index_ids == db_ids, (f"index and DB disagree: {len(index_ids - db_ids)} index-only, "
                                 f"{len(db_ids - index_ids)} DB-only")
    out = {}
    for f in files:
        if f.status == "indexed":
            assert per_file.get(f.id, 0) == f.chunks > 0, (f.name, per_file.get(f.id), f.chunks)
            assert f.sha256 in blobs, f"the bytes of {f.name} are missing"
            out[f.name] = f.chunks
        else:
            assert per_file.get(f.id, 0) == 0, f"failed file {f.name} has chunks"
    assert set(per_file) <= {f.id for f in files}
    return out


def chunk_texts(manager: KnowledgeBaseManager, kb: KnowledgeBase) -> dict[int, str]:
    """The live chunks' texts by chunk id, straight from the database."""
    row = kb.row()
    with manager.db.read() as s:
        return dict(s.execute(select(ChunkRow.id, ChunkRow.text).where(
            ChunkRow.kb_id == kb.id, ChunkRow.generation == row.generation)).tuples().all())


def write_legacy_kb(folder: Path, texts: list[str], search_mode: str | None = None,
                    source: bytes | None = None) -> Path:
    """A KB folder as the generation-file version wrote it (format 1, generation 3), one file, real vectors."""
    import faiss
    import numpy as np

    from kb.embeddings import create_embedder

    body = source if source is not None else "\n\n".join(texts).encode("utf-8")
    sha = hashlib.sha256(body).hexdigest()
    (folder / "files").mkdir(parents=True)
    (folder / "files" / f"{sha}.md").write_bytes(body)
    chunks = [{"id": i + 5, "file_id": sha, "text": t, "page": None, "heading": None, "ordinal": i}
              for i, t in enumerate(texts)]
    (folder / "chunks.3.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks),
                                           encoding="utf-8")
    emb = create_embedder("minilm+use", 32, 2)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(emb.dim))
    index.add_with_ids(emb.encode_documents(texts), np.arange(5, 5 + len(texts), dtype=np.int64))
    (folder / "index.3.faiss").write_bytes(faiss.serialize_index(index).tobytes())
    (folder / "manifest.json").write_text(json.dumps({
        "format": 1, "name": folder.name, "generation": 3, "next_id": 5 + len(texts), "search_mode": search_mode,
        "embedding": {"model": "minilm+use", "dim": emb.dim},
        "files": {sha: {"file_id": sha, "name": "doc.md", "size": len(body), "chunks": len(texts),
                        "status": "indexed", "stored": f"{sha}.md", "title": None, "pages": None, "ocr_pages": [],
                        "added_at": 1.0}},
    }), encoding="utf-8")
    return folder
