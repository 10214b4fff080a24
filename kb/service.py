"""The one place that changes knowledge bases: create, ingest, delete, rebuild, search.

The web UI, the HTTP API and the CLI all call this module, so each behaviour lives once.
A KB is a folder ``<data_dir>/<name>/`` holding ``manifest.json``, the generation files of
``kb.store`` and ``files/`` (a copy of every indexed source, named by its sha256, so a rebuild
needs nothing from outside the KB).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.settings import Settings
from kb.embeddings import Embedder, create_embedder
from kb.retrieval import SearchParams
from kb.retrieval import search as run_search
from kb.splitter import chunk_documents, embedding_text
from kb.store import FORMAT_VERSION, MANIFEST, IndexState, KBLock, atomic_write, read_manifest, write_manifest
from kb.types import Chunk, FileResult, Hit, KBConflict, KBError, KBNotFound, LoadedFile, LoadError

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

MODES = ("dense", "keyword", "hybrid")
_NAME_RE = re.compile(r"^[^\W_][\w\-. ]{0,63}$")
# Every format is parsed in a child process with time and memory limits, so a hostile file cannot stall or
# crash the server. Text formats use pooled long-lived children (cheap per file); PDF, Office and images get a
# fresh child each (native parsers, OCR).
_TEXT_FORMATS = {".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".html", ".htm", ".xml"}
_EMBED_BATCH_CHUNKS = 256  # chunks gathered across small files before one embedding call


def validate_kb_name(name: str) -> str:
    name = unicodedata.normalize("NFC", (name or "").strip())
    if not _NAME_RE.match(name) or ".." in name:
        raise KBError(
            "invalid knowledge base name: use 1-64 letters (any language), digits, '-', '_', '.' "
            "or spaces, starting with a letter or digit"
        )
    return name


def safe_file_name(name: str) -> str:
    """A display label from an untrusted upload name: no directories, no control characters."""
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 200 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else base[:200]
    return base or "unnamed"


def _ext(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Pending:
    """A loaded, chunked file waiting for its embeddings."""

    path: Path
    name: str
    file_id: str
    size: int
    loaded: LoadedFile
    chunks: list[Chunk]
    replaces: list[str]
    started: float
    result_index: int
    texts: list[str] = field(default_factory=list)


class KnowledgeBase:
    def __init__(self, manager: KnowledgeBaseManager, path: Path):
        self.manager = manager
        self.settings = manager.settings
        self.path = path
        self.name = path.name
        self.lock = KBLock(path)
        self._state: IndexState | None = None
        self._state_key: tuple[int, int] | None = None
        self._state_guard = threading.Lock()

    # --- reading --------------------------------------------------------------------------
    def _manifest_key(self) -> tuple[int, int]:
        st = (self.path / MANIFEST).stat()
        return st.st_mtime_ns, st.st_size

    def state(self) -> IndexState:
        """The committed state, reloaded when another writer (thread or process) committed."""
        with self._state_guard:
            try:
                key = self._manifest_key()
            except FileNotFoundError:
                raise KBNotFound(f"knowledge base '{self.name}' does not exist") from None
            if self._state is None or key != self._state_key:
                self._state = IndexState.load(self.path)
                self._state_key = key
            return self._state

    @property
    def manifest(self) -> dict[str, Any]:
        return self.state().manifest

    @property
    def embedder(self) -> Embedder:
        return self.manager.embedder(self.manifest["embedding"]["model"])

    @property
    def search_mode(self) -> str:
        return self.manifest.get("search_mode") or self.settings.search_mode

    def info(self) -> dict[str, Any]:
        st = self.state()
        files = st.manifest["files"].values()
        return {
            "name": self.name,
            "files": sum(1 for f in files if f["status"] == "indexed"),
            "failed": sum(1 for f in files if f["status"] == "failed"),
            "chunks": len(st.chunks),
            "embedding_model": st.manifest["embedding"]["model"],
            "search_mode": self.search_mode,
            "updated_at": st.manifest.get("updated_at"),
        }

    def files(self) -> list[dict[str, Any]]:
        recs = self.manifest["files"].values()
        return sorted((dict(r) for r in recs), key=lambda r: r.get("added_at", 0))

    def search(self, query: str, top_k: int | None = None, threshold: float | None = None,
               mode: str | None = None) -> list[Hit]:
        mode = mode or self.search_mode
        if mode not in MODES:
            raise KBError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
        s = self.settings
        params = SearchParams(
            top_k=top_k if top_k is not None else s.top_k,
            threshold=threshold if threshold is not None else s.score_threshold,
            mode=mode, alpha=s.hybrid_alpha,
        )
        if not 0.0 <= params.threshold <= 1.0:
            raise KBError("threshold must be between 0 and 1")
        if params.top_k < 1:
            raise KBError("top_k must be at least 1")
        return run_search(self.state(), self.embedder, query, params, self.manager.reranker())

    # --- writing --------------------------------------------------------------------------
    def set_search_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise KBError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
        with self.lock.hold():
            manifest = read_manifest(self.path) | {"search_mode": mode}
            write_manifest(self.path, manifest)

    def ingest(self, paths: Sequence[Path | str], names: Sequence[str] | None = None,
               progress: Progress | None = None) -> list[FileResult]:
        """Index files; ``names`` are the users' file names when ``paths`` are temp uploads."""
        paths = [Path(p) for p in paths]
        names = list(names) if names is not None else [p.name for p in paths]
        if len(names) != len(paths):
            raise KBError("names and paths differ in length")
        with self.lock.hold():
            state = IndexState.load(self.path)  # private copy: readers keep searching the old one
            return self._ingest_into(state, paths, [safe_file_name(n) for n in names], progress, replace=True)

    def _ingest_into(self, state: IndexState, paths: list[Path], names: list[str],
                     progress: Progress | None, replace: bool, checkpoint: bool = True) -> list[FileResult]:
        """Add files to ``state``. With ``checkpoint``, commit every ``checkpoint_seconds`` (an ingest adds to
        a complete KB, so each checkpoint is complete too); otherwise commit once, at the end."""
        results: list[FileResult] = []
        pending: list[_Pending] = []
        files = state.manifest["files"] = dict(state.manifest["files"])
        last_commit = time.monotonic()
        dirty = False
        total = len(paths)
        for i, (path, name) in enumerate(zip(paths, names, strict=True)):
            if progress:
                progress(i / max(total, 1), f"{i + 1}/{total} {name}")
            started = time.monotonic()
            results.append(FileResult(name=name, status="failed"))
            try:
                size = path.stat().st_size
                if size > self.settings.max_file_mb * 1024 * 1024:
                    raise LoadError(f"too large: {size / 2**20:.1f} MB > limit {self.settings.max_file_mb} MB")
                file_id = sha256_file(path)
                results[-1].file_id = file_id
                known = files.get(file_id)
                if (known and known["status"] == "indexed") or any(p.file_id == file_id for p in pending):
                    results[-1] = FileResult(name=name, status="duplicate", file_id=file_id,
                                             chunks=(known or {}).get("chunks", 0))
                    continue
                loaded = self._load(path, name)
                chunks = chunk_documents(
                    loaded.docs, file_id=file_id, size=self.settings.chunk_size,
                    overlap=self.settings.chunk_overlap, max_tokens=self.embedder.max_tokens,
                    count_tokens=self.embedder.count_tokens, first_id=int(state.manifest["next_id"]),
                )
                if not chunks:
                    raise LoadError("empty: no text found")
                state.manifest["next_id"] = chunks[-1].id + 1
                replaces = [fid for fid, r in files.items()
                            if replace and r["name"] == name and r["status"] == "indexed" and fid != file_id]
                title = loaded.title or Path(name).stem
                texts = [embedding_text(c, title) if self.settings.title_prefix else c.text for c in chunks]
                pending.append(_Pending(path, name, file_id, size, loaded, chunks, replaces, started, i, texts))
            except LoadError as e:
                self._record_failure(files, results[-1], path, name, e.reason, started)
                dirty = True
            except KBError as e:
                self._record_failure(files, results[-1], path, name, str(e), started)
                dirty = True
            except Exception as e:  # a bug or a library failure must not take the batch down
                log.exception("ingest of %s failed", name)
                reason = f"internal error: {type(e).__name__}: {e}"
                self._record_failure(files, results[-1], path, name, reason, started)
                dirty = True
            if sum(len(p.chunks) for p in pending) >= _EMBED_BATCH_CHUNKS:
                self._flush(state, pending, results)
                dirty = True
            if checkpoint and dirty and time.monotonic() - last_commit > self.settings.checkpoint_seconds:
                self._flush(state, pending, results)
                self._commit(state)
                last_commit, dirty = time.monotonic(), False
        self._flush(state, pending, results)
        self._commit(state)
        if progress:
            progress(1.0, "done")
        return results

    def _record_failure(self, files: dict[str, Any], result: FileResult, path: Path, name: str,
                        reason: str, started: float) -> None:
        result.status, result.error = "failed", reason
        result.seconds = time.monotonic() - started
        fid = result.file_id or f"failed:{name}"
        if files.get(fid, {}).get("status") == "indexed":
            return  # never let a failed re-read hide chunks that are already indexed
        files[fid] = {"file_id": fid, "name": name, "size": _size(path), "chunks": 0, "status": "failed",
                      "error": reason, "pages": None, "ocr_pages": [], "added_at": time.time()}

    def _flush(self, state: IndexState, pending: list[_Pending], results: list[FileResult]) -> None:
        """Embed pending chunks in one batch and add them (with their files) to ``state``."""
        if not pending:
            return
        import numpy as np

        texts = [t for p in pending for t in p.texts]
        vectors = self.embedder.encode_documents(texts)
        files = state.manifest["files"]
        stored = self.path / "files"
        stored.mkdir(exist_ok=True)
        offset = 0
        for p in pending:
            n = len(p.chunks)
            ids = np.array([c.id for c in p.chunks], dtype=np.int64)
            state.vectors.add(ids, vectors[offset:offset + n])
            state.bm25.add(ids.tolist(), p.texts)
            offset += n
            for c in p.chunks:
                state.chunks[c.id] = c
            dest = stored / f"{p.file_id}{_ext(p.name)}"
            if not dest.exists():
                atomic_write(dest, p.path.read_bytes())
            for old in p.replaces:
                self._remove_file(state, old)
            files.pop(f"failed:{p.name}", None)
            files[p.file_id] = {
                "file_id": p.file_id, "name": p.name, "size": p.size, "chunks": n, "status": "indexed",
                "error": None, "pages": p.loaded.pages, "ocr_pages": p.loaded.ocr_pages,
                "title": p.loaded.title, "warnings": p.loaded.warnings, "stored": dest.name, "added_at": time.time(),
            }
            results[p.result_index] = FileResult(
                name=p.name, status="replaced" if p.replaces else "indexed", chunks=n, file_id=p.file_id,
                pages=p.loaded.pages, ocr_pages=p.loaded.ocr_pages, seconds=time.monotonic() - p.started,
            )
        pending.clear()

    def _remove_file(self, state: IndexState, file_id: str) -> None:
        import numpy as np

        ids = [cid for cid, c in state.chunks.items() if c.file_id == file_id]
        state.vectors.delete(np.array(ids, dtype=np.int64))
        state.bm25.delete(ids)
        for cid in ids:
            del state.chunks[cid]
        rec = state.manifest["files"].pop(file_id, None)
        if rec and rec.get("stored"):
            # Deleted after the commit that drops the record; see delete_file / _sweep_sources.
            state.manifest.setdefault("orphans", []).append(rec["stored"])

    def _sweep_sources(self, state: IndexState) -> None:
        orphans = state.manifest.pop("orphans", [])
        keep = {r.get("stored") for r in state.manifest["files"].values()}
        for name in orphans:
            if name not in keep:
                (self.path / "files" / name).unlink(missing_ok=True)

    def _commit(self, state: IndexState) -> None:
        state.commit(self.path)
        self._sweep_sources(state)

    def delete_file(self, file: str) -> dict[str, Any]:
        """Remove a file (by file id or display name) and all its chunks."""
        with self.lock.hold():
            state = IndexState.load(self.path)
            files = state.manifest["files"] = dict(state.manifest["files"])
            matches = [fid for fid, r in files.items() if fid == file or r["name"] == file]
            if not matches:
                raise KBNotFound(f"no file '{file}' in knowledge base '{self.name}'")
            removed = [dict(files[fid]) for fid in matches]
            for fid in matches:
                self._remove_file(state, fid)
            self._commit(state)
            return {"removed": removed}

    def rebuild(self, progress: Progress | None = None, embedding_model: str | None = None) -> list[FileResult]:
        """Re-index every stored source with the current splitting settings (and optionally a new
        embedding model). Searches keep using the old index until the new one is committed."""
        with self.lock.hold():
            old = IndexState.load(self.path)
            model = embedding_model or old.manifest["embedding"]["model"]
            emb = self.manager.embedder(model)
            manifest = dict(old.manifest, files={}, next_id=0, embedding={"model": model, "dim": emb.dim})
            state = IndexState.empty(manifest)
            recs = [r for r in old.manifest["files"].values() if r["status"] == "indexed"]
            paths = [self.path / "files" / r["stored"] for r in recs]
            # No checkpoints: the new state starts empty, so committing it before every file is re-read
            # would publish a KB missing the rest to readers (and to a restart after a crash).
            return self._ingest_into(state, paths, [r["name"] for r in recs], progress, replace=False,
                                     checkpoint=False)

    def _load(self, path: Path, name: str) -> LoadedFile:
        from kb.loaders import LoaderOptions, load_file_isolated
        from kb.loaders.worker import load_file_pooled

        s = self.settings
        opts = LoaderOptions(max_pages=s.max_pages, ocr=s.ocr, max_file_mb=s.max_file_mb, timeout_s=s.file_timeout_s)
        loader = load_file_pooled if _ext(name) in _TEXT_FORMATS else load_file_isolated
        return loader(path, name=name, options=opts)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class KnowledgeBaseManager:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.prepare_dirs()
        self._kbs: dict[str, KnowledgeBase] = {}
        self._guard = threading.Lock()

    def embedder(self, spec: str | None = None) -> Embedder:
        return create_embedder(spec or self.settings.embedding_model, self.settings.embed_batch_size,
                               self.settings.n_threads)

    def reranker(self) -> Callable[[str, list[Hit]], list[Hit]] | None:
        from kb.rerank import get_reranker

        return get_reranker(self.settings.rerank_model)

    def names(self) -> list[str]:
        root = self.settings.data_dir
        return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())

    def list(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            try:
                out.append(self.get(name).info())
            except KBError as e:
                out.append({"name": name, "error": str(e)})
        return out

    def exists(self, name: str) -> bool:
        try:
            return (self.settings.data_dir / validate_kb_name(name) / MANIFEST).is_file()
        except KBError:
            return False

    def get(self, name: str) -> KnowledgeBase:
        name = validate_kb_name(name)
        path = self.settings.data_dir / name
        if not (path / MANIFEST).is_file():
            raise KBNotFound(f"knowledge base '{name}' does not exist")
        with self._guard:
            if name not in self._kbs:
                self._kbs[name] = KnowledgeBase(self, path)
            return self._kbs[name]

    def create(self, name: str, embedding_model: str | None = None, search_mode: str | None = None,
               exist_ok: bool = False) -> KnowledgeBase:
        name = validate_kb_name(name)
        if search_mode is not None and search_mode not in MODES:
            raise KBError(f"unknown search mode '{search_mode}': use one of {', '.join(MODES)}")
        path = self.settings.data_dir / name
        if (path / MANIFEST).is_file():
            if exist_ok:
                return self.get(name)
            raise KBConflict(f"knowledge base '{name}' already exists")
        model = embedding_model or self.settings.embedding_model
        emb = self.embedder(model)
        path.mkdir(parents=True, exist_ok=True)
        with KBLock(path).hold():
            if not (path / MANIFEST).is_file():
                write_manifest(path, {
                    "format": FORMAT_VERSION, "name": name, "generation": 0, "next_id": 0,
                    "embedding": {"model": model, "dim": emb.dim}, "search_mode": search_mode,
                    "files": {}, "created_at": time.time(), "updated_at": time.time(),
                })
        return self.get(name)

    def delete(self, name: str) -> None:
        kb = self.get(name)
        with kb.lock.hold():
            # Rename first so a half-finished delete never looks like a damaged KB.
            trash = self.settings.system_dir / f"deleted-{kb.name}-{time.time_ns()}"
            kb.path.rename(trash)
        with self._guard:
            self._kbs.pop(kb.name, None)
        shutil.rmtree(trash, ignore_errors=True)
