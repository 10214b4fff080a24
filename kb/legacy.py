"""Import knowledge bases written by earlier versions (a folder per KB: ``manifest.json``, generation files
``index.<g>.faiss`` + ``chunks.<g>.jsonl``, and ``files/`` with a copy of every source) into the database
and index, once, without re-embedding. The old folder is then moved aside, never deleted."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kb.types import KBError

if TYPE_CHECKING:
    from kb.service import KnowledgeBaseManager

log = logging.getLogger(__name__)


def import_legacy(manager: KnowledgeBaseManager) -> list[str]:
    """Import every old-format KB folder under the data dir; returns the names imported."""
    done = []
    root = manager.settings.data_dir
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file()):
        try:
            _import_one(manager, folder)
            done.append(folder.name)
        except (KBError, OSError, ValueError, KeyError, RuntimeError) as e:
            log.error("could not import the old knowledge base in %s: %s (left as it was)", folder, e)
    return done


def _import_one(manager: KnowledgeBaseManager, folder: Path) -> None:
    import faiss

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    name, g = manifest.get("name") or folder.name, int(manifest["generation"])
    if manager.exists(name):
        if manager.get(name).info()["files"]:
            raise KBError(f"a knowledge base named '{name}' already exists in the database")
        manager.delete(name)  # an import killed half-way: start it again
    dim = int(manifest["embedding"]["dim"])
    records = [r for r in manifest["files"].values() if r.get("status") == "indexed"]
    blobs = {r["file_id"]: (folder / "files" / r["stored"]).read_bytes() for r in records}
    files = [{**r, "id": r["file_id"], "sha256": hashlib.sha256(blobs[r["file_id"]]).hexdigest(),
              "status": "indexed"} for r in records]
    chunks: list[dict] = []
    vectors = np.zeros((0, dim), dtype=np.float32)
    if g > 0:  # generation 0: created, never filled
        with open(folder / f"chunks.{g}.jsonl", encoding="utf-8") as f:
            chunks = [c for c in map(json.loads, filter(str.strip, f)) if c["file_id"] in blobs]
        index = faiss.deserialize_index(np.frombuffer((folder / f"index.{g}.faiss").read_bytes(), dtype=np.uint8))
        if chunks:
            vectors = np.vstack([index.reconstruct(int(c["id"])) for c in chunks])
    meta = {"name": name, "embedding_model": manifest["embedding"]["model"], "dim": dim,
            "search_mode": manifest.get("search_mode")}
    manager.load_kb(meta, files, [c | {"file": c["file_id"]} for c in chunks], vectors,
                    {f["sha256"]: blobs[f["id"]] for f in files})
    aside = manager.settings.system_dir / f"imported-{folder.name}-{time.time_ns()}"
    folder.rename(aside)
    log.warning("imported the old knowledge base '%s' (%d files, %d chunks); its old folder is now %s",
                name, len(files), len(chunks), aside)
