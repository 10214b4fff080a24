"""On-disk state of one knowledge base: FAISS vectors, chunk texts, BM25 index, manifest.

Crash safety: each commit writes a new *generation* of data files (``index.<g>.faiss``,
``chunks.<g>.jsonl``, ``bm25.<g>.json``), fsyncs them, then atomically replaces
``manifest.json``, which names the generation. The manifest rename is the commit point: a
process killed at any moment leaves either the old or the new generation in force, never a mix.
Files of other generations are swept on the next load.

Concurrency: writers hold the KB lock (a thread lock plus ``fcntl.flock`` on ``.lock``, so two
processes on one data dir are safe too). Readers never lock: they search an in-memory snapshot
and reload when the manifest on disk names a newer generation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from kb.keyword import BM25Index
from kb.types import Chunk, KBError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class VectorStore(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def delete(self, ids: np.ndarray) -> None: ...
    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    def vectors(self, ids: list[int]) -> np.ndarray: ...
    def to_bytes(self) -> bytes: ...


class FaissStore:
    """Exact inner-product search over L2-normalised vectors (= cosine), ids kept stable."""

    def __init__(self, dim: int, data: bytes | None = None):
        import faiss

        self._faiss = faiss
        if data is not None:
            self.index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        else:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.dim = dim

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def delete(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(ids.astype(np.int64))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not len(self) or k <= 0:
            return []
        scores, ids = self.index.search(vector.reshape(1, -1).astype(np.float32), min(k, len(self)))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def vectors(self, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.index.reconstruct(int(i)) for i in ids])

    def to_bytes(self) -> bytes:
        return self._faiss.serialize_index(self.index).tobytes()


class KBLock:
    """Re-entrant within a thread, exclusive across threads and processes."""

    _thread_locks: ClassVar[dict[Path, threading.RLock]] = {}
    _guard = threading.Lock()

    def __init__(self, kb_dir: Path):
        self.path = kb_dir / ".lock"
        with KBLock._guard:
            self._rlock = KBLock._thread_locks.setdefault(kb_dir.resolve(), threading.RLock())
        self._depth = threading.local()

    @contextlib.contextmanager
    def hold(self, timeout: float = 600.0) -> Iterator[None]:
        if not self._rlock.acquire(timeout=timeout):
            raise KBError("the knowledge base is busy with another change; try again shortly")
        depth = getattr(self._depth, "n", 0)
        fd = None
        try:
            if depth == 0:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise KBError("the knowledge base is locked by another process") from None
                        time.sleep(0.05)
            self._depth.n = depth + 1
            yield
        finally:
            self._depth.n = depth
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            self._rlock.release()


class IndexState:
    """Everything searchable in one KB generation, held in memory."""

    def __init__(self, manifest: dict[str, Any], vectors: FaissStore, chunks: dict[int, Chunk], bm25: BM25Index):
        self.manifest = manifest
        self.vectors = vectors
        self.chunks = chunks
        self.bm25 = bm25

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @classmethod
    def empty(cls, manifest: dict[str, Any]) -> IndexState:
        return cls(manifest, FaissStore(int(manifest["embedding"]["dim"])), {}, BM25Index())

    @classmethod
    def load(cls, kb_dir: Path) -> IndexState:
        manifest = read_manifest(kb_dir)
        g = int(manifest["generation"])
        dim = int(manifest["embedding"]["dim"])
        if g == 0:
            return cls.empty(manifest)
        try:
            vectors = FaissStore(dim, (kb_dir / f"index.{g}.faiss").read_bytes())
            chunks: dict[int, Chunk] = {}
            with open(kb_dir / f"chunks.{g}.jsonl", encoding="utf-8") as f:
                for line in f:
                    c = Chunk(**json.loads(line))
                    chunks[c.id] = c
            bm25 = _load_bm25(kb_dir, g, manifest, chunks)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise KBError(f"knowledge base '{kb_dir.name}' is damaged ({e}); rebuild it") from e
        if len(vectors) != len(chunks):
            raise KBError(f"knowledge base '{kb_dir.name}' is inconsistent ({len(vectors)} vectors, "
                          f"{len(chunks)} chunks); rebuild it")
        return cls(manifest, vectors, chunks, bm25)

    def commit(self, kb_dir: Path) -> None:
        """Persist as the next generation (caller holds the KB lock)."""
        old = int(self.manifest["generation"])
        g = max(old, _disk_generation(kb_dir)) + 1
        atomic_write(kb_dir / f"index.{g}.faiss", self.vectors.to_bytes())
        lines = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in self.chunks.values())
        atomic_write(kb_dir / f"chunks.{g}.jsonl", lines.encode("utf-8"))
        atomic_write(kb_dir / f"bm25.{g}.json", self.bm25.to_json())
        manifest = dict(self.manifest, generation=g, updated_at=time.time())
        write_manifest(kb_dir, manifest)  # commit point
        self.manifest = manifest
        sweep_generations(kb_dir, keep=g)


def _load_bm25(kb_dir: Path, g: int, manifest: dict[str, Any], chunks: dict[int, Chunk]) -> BM25Index:
    path = kb_dir / f"bm25.{g}.json"
    if path.exists():
        return BM25Index.from_json(path.read_bytes())
    # A KB written before format 1.1 kept this index as a pickle, which is never read (unpickling runs code):
    # it is rebuilt from the chunk texts, as ingest indexed them, and written as JSON by the next commit.
    from kb.splitter import embedding_text

    files = manifest["files"]
    bm25 = BM25Index()
    for c in chunks.values():
        rec = files.get(c.file_id, {})
        bm25.add([c.id], [embedding_text(c, rec.get("title") or Path(rec.get("name", "")).stem or None)])
    return bm25


def _disk_generation(kb_dir: Path) -> int:
    try:
        return int(read_manifest(kb_dir)["generation"])
    except (KBError, KeyError, ValueError):
        return 0


def read_manifest(kb_dir: Path) -> dict[str, Any]:
    path = kb_dir / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KBError(f"'{kb_dir.name}' is not a knowledge base (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise KBError(f"knowledge base '{kb_dir.name}' has an unreadable manifest: {e}") from e
    if data.get("format") != FORMAT_VERSION:
        raise KBError(f"knowledge base '{kb_dir.name}' has an unknown format {data.get('format')!r}")
    return data


def write_manifest(kb_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write(kb_dir / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))


def sweep_generations(kb_dir: Path, keep: int) -> None:
    """Delete data files of other generations and temp files left by a killed writer."""
    for p in kb_dir.iterdir():
        parts = p.name.split(".")
        stale_gen = len(parts) == 3 and parts[0] in {"index", "chunks", "bm25"} and parts[1] != str(keep)
        legacy_pickle = p.suffix == ".pkl"  # never read; see _load_bm25
        if stale_gen or legacy_pickle or (p.name.startswith(".") and p.name.endswith(".tmp")):
            with contextlib.suppress(OSError):
                p.unlink()
