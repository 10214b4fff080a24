"""The one place that changes knowledge bases: create, ingest, delete, rebuild, search, export, import.

The web UI, the HTTP API and the CLI all call this module, so each behaviour lives once.

Storage: the database (``kb.db``) holds KBs with their settings, file bytes, files, chunks and jobs; an
index backend (``kb.index``) holds vectors and keyword terms by chunk id. A change is one DB transaction
followed by an idempotent index operation; ``reconcile`` (run at start-up and before a job resumes)
re-adds chunks the index lacks and drops index entries with no chunk row, so a crash between the two heals.
Ingest and rebuild run as durable jobs (``kb.jobs``): one at a time per KB, any number of KBs at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Self

import numpy as np
from sqlalchemy import delete, func, select

from configs.settings import Settings
from kb.db import BlobRow, ChunkRow, Database, DroppedIndex, FileRow, KBRow, default_url
from kb.embeddings import Embedder, create_embedder, fits_tokens
from kb.index import CANDIDATES, MODES, IndexBackend, create_index
from kb.jobs import JobContext, JobQueue
from kb.keyword import term_counts
from kb.loaders import parse_cost
from kb.loaders.base import LoaderOptions
from kb.retrieval import SearchParams, fuse
from kb.splitter import chunk_documents, embedding_text
from kb.types import Chunk, FileResult, Hit, KBConflict, KBError, KBNotFound, LoadedFile, LoadError

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

_NAME_RE = re.compile(r"^[^\W_][\w\-. ]{0,63}$")
# Every format is parsed in a child process with time and memory limits, so a hostile file cannot stall or
# crash the server. Text formats use pooled long-lived children (cheap per file); PDF, Office and images get a
# fresh child each (native parsers, OCR).
_EMBED_BATCH_CHUNKS = 256  # chunks gathered across small files before one embedding call
EXPORT_FORMAT = 1


def validate_kb_name(name: str) -> str:
    name = unicodedata.normalize("NFC", (name or "").strip())
    if not _NAME_RE.match(name) or ".." in name:
        raise KBError(
            "invalid knowledge base name: use 1-64 letters (any language), digits, '-', '_', '.' "
            "or spaces, starting with a letter or digit"
        )
    return name


def _clean_part(part: str) -> str:
    part = "".join(ch for ch in part if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    if len(part) > 200:
        stem, dot, ext = part.rpartition(".")
        part = (stem[: 200 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else part[:200]
    return part


def safe_file_name(name: str) -> str:
    """A file's identity in its KB from an untrusted name: the relative path as ingested (``a/README.md``),
    without '..', absolute roots or control characters. It is a label only: file bytes live in the database."""
    parts = [_clean_part(p) for p in re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))]
    parts = [p for p in parts if p and p not in {".", ".."}][-8:]
    return "/".join(parts)[-1000:] or "unnamed"


def _ext(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _numbered(name: str, n: int) -> str:
    """``report.pdf`` -> ``report (2).pdf``: a second file of the same name, kept beside the first."""
    stem, dot, ext = name.rpartition(".")
    if not dot or "/" in ext or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def _title(file: FileRow) -> str:
    return file.title or Path(file.name).stem


def embed_texts(chunks: Sequence[Chunk], title: str | None, title_prefix: bool) -> list[str]:
    """What is embedded and keyword-indexed for each chunk (at ingest, rebuild and reconcile alike)."""
    return [embedding_text(c, title) if title_prefix else c.text for c in chunks]


@dataclass
class _Loaded:
    """A loaded, chunked file waiting for its embeddings."""

    index: int  # position in the job's file list
    name: str
    sha256: str
    size: int
    loaded: LoadedFile
    chunks: list[Chunk]
    texts: list[str]
    started: float
    terms: list[Counter[str]]  # the keyword index's work, done in the reader beside the embedder
    vectors: np.ndarray | None = None


class _ReadAhead:
    """Runs ``_items()`` in a thread of its own, up to ``AHEAD_CHUNKS`` chunks ahead of the thread that embeds.
    Items are tuples whose third element is a ``_Loaded`` (or None); iterating yields them in order."""

    # Chunks loaded ahead (at least one file): a bound of 4 files made small files reach the embedder 12 chunks
    # at a time, each call followed by its own commit (62 of each for CMRC's 256 passages).
    AHEAD_CHUNKS = 2 * _EMBED_BATCH_CHUNKS

    def __init__(self, name: str):
        self._queue: queue.Queue[Any] = queue.Queue()
        self._room = threading.Condition()
        self._ahead = 0  # chunks in the queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._room:
            self._room.notify_all()  # a put waiting for room sees the stop
        self._thread.join()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            with self._room:
                self._ahead -= _chunks_in(item)
                self._room.notify_all()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def ready(self) -> bool:
        """Whether the next file (or the end) is already waiting."""
        return not self._queue.empty()

    def time_to_embed(self, chunks: int) -> bool:
        """Embed the gathered files now: the batch is full, or the next file is not read yet. The embedder never
        waits for a full batch while the reader works, and the reader reads while it embeds."""
        return chunks >= _EMBED_BATCH_CHUNKS or not self.ready()

    def _items(self) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def _put(self, value: Any) -> bool:
        n = _chunks_in(value)
        with self._room:
            while self._ahead and self._ahead + n > self.AHEAD_CHUNKS and not self._stop.is_set():
                self._room.wait()
            if self._stop.is_set():
                return False
            self._ahead += n
        self._queue.put(value)
        return True

    def _run(self) -> None:
        try:
            for out in self._items():
                if not self._put(out):
                    return
            self._put(None)
        except BaseException as e:  # handed to the consumer, which fails the job with it
            self._put(e)


class _Reader(_ReadAhead):
    """Loads and chunks an ingest job's files, in ``order()``.

    Yields ``(index, item, loaded, reason)``: ``reason`` when the file failed; ``loaded`` None (and no reason)
    when its bytes are already indexed in the KB or came earlier in this job, which the consumer settles."""

    def __init__(self, kb: KnowledgeBase, files: list[dict[str, Any]], done: set[int], cfg: KBSettings,
                 emb: Embedder):
        super().__init__(f"ingest-reader-{kb.name}")
        self.kb, self.files, self.done, self.cfg, self.emb = kb, files, done, cfg, emb
        self.started: dict[int, float] = {}

    def load(self, i: int, item: dict[str, Any]) -> tuple[_Loaded | None, str | None]:
        return self.kb._read(i, item, self.cfg, self.emb, self.started[i])

    def order(self) -> list[int]:
        """Cheap formats first, each rank smallest first: the embedder starts at once and has a backlog of text
        while the PDFs and scans parse behind it (a text file yields its chunks in milliseconds; a PDF can take a
        second for a dozen).
        The same bytes given twice under names of one kind keep the order given, so the first given is the one
        indexed; under names of two kinds (notes.txt, notes.pdf) the cheaper kind goes first and decides."""
        return sorted((i for i in range(len(self.files)) if i not in self.done),
                      key=lambda i: (parse_cost(self.files[i]["name"]), int(self.files[i].get("size") or 0), i))

    def _items(self) -> Iterator[tuple[int, dict[str, Any], _Loaded | None, str | None]]:
        seen: set[str] = set()
        order = self.order()
        # One query, not one per file; a file indexed meanwhile is caught at its commit.
        indexed = self.kb._indexed({self.files[i]["sha256"] for i in order if self.files[i].get("sha256")})
        for i in order:
            item = self.files[i]
            self.started[i] = time.monotonic()
            sha = item.get("sha256")
            if item.get("error") or not sha:
                yield i, item, None, item.get("error") or "no data"
            elif sha in seen or sha in indexed:
                yield i, item, None, None
            else:
                seen.add(sha)
                loaded, reason = self.load(i, item)
                yield i, item, loaded, reason


class _RebuildReader(_ReadAhead):
    """Re-reads a rebuild's files. Yields ``(index, file, loaded, error)``: a file that cannot be re-read brings its
    old chunks instead, with the reason."""

    def __init__(self, kb: KnowledgeBase, files: list[FileRow], skip: set[int], cfg: KBSettings, emb: Embedder,
                 live: int):
        super().__init__(f"rebuild-reader-{kb.name}")
        self.kb, self.files, self.skip, self.cfg, self.emb, self.live = kb, files, skip, cfg, emb, live

    def _items(self) -> Iterator[tuple[int, FileRow, _Loaded, str | None]]:
        for i, f in enumerate(self.files):
            if i in self.skip:
                continue
            started = time.monotonic()
            item = {"name": f.name, "sha256": f.sha256, "size": f.size}
            p, error = self.kb._read(i, item, self.cfg, self.emb, started)
            if p is None:  # keep what the file had: its old chunks, re-embedded for the new index
                p = self.kb._old_chunks(f, self.live, self.cfg, i, started)
            yield i, f, p, error


def _chunks_in(item: Any) -> int:
    """Chunks a reader's queue item holds (a loaded file's; 0 for a failure, a duplicate or the end)."""
    return len(item[2].chunks) if isinstance(item, tuple) and item[2] is not None else 0


@dataclass
class KBSettings:
    """The settings a KB is built with (recorded with it, so a rebuild is reproducible)."""

    embedding_model: str
    dim: int
    chunk_size: int
    chunk_overlap: int
    title_prefix: bool

    @classmethod
    def of(cls, row: KBRow) -> KBSettings:
        return cls(row.embedding_model, row.dim, row.chunk_size, row.chunk_overlap, row.title_prefix)


class KnowledgeBase:
    """A handle on one KB (by name); every read goes to the database, so it never goes stale."""

    def __init__(self, manager: KnowledgeBaseManager, row: KBRow):
        self.manager = manager
        self.settings = manager.settings
        self.db = manager.db
        self.id = row.id
        self.name = row.name

    # --- reading --------------------------------------------------------------------------
    def row(self) -> KBRow:
        with self.db.read() as s:
            row = s.get(KBRow, self.id)
            if row is None:
                raise KBNotFound(f"knowledge base '{self.name}' does not exist")
            return row

    @property
    def embedder(self) -> Embedder:
        return self._embedder(self.row())

    def _embedder(self, row: KBRow) -> Embedder:
        """The KB's model, checked against the vectors it holds: a remote server (or a local directory) may
        now serve a model of another size, whose vectors cannot be compared with these."""
        emb = self.manager.embedder(row.embedding_model)
        if emb.dim != row.dim:
            raise KBError(f"embedding model {row.embedding_model} now gives {emb.dim}-dimensional vectors but "
                          f"knowledge base '{row.name}' holds {row.dim}-dimensional ones: rebuild it")
        return emb

    @property
    def search_mode(self) -> str:
        return self.row().search_mode or self.settings.search_mode

    @property
    def prompt(self) -> str:
        """Extra instructions for answers from this KB ("" = none)."""
        return self.row().prompt or ""

    def info(self) -> dict[str, Any]:
        row = self.row()
        with self.db.read() as s:
            counts = dict(s.execute(select(FileRow.status, func.count()).where(FileRow.kb_id == self.id)
                                    .group_by(FileRow.status)).tuples().all())
            chunks = s.scalar(select(func.count()).select_from(ChunkRow).where(
                ChunkRow.kb_id == self.id, ChunkRow.generation == row.generation)) or 0
        return {
            "name": self.name, "files": counts.get("indexed", 0), "failed": counts.get("failed", 0),
            "chunks": chunks, "embedding_model": row.embedding_model,
            "search_mode": row.search_mode or self.settings.search_mode,
            "chunk_size": row.chunk_size, "chunk_overlap": row.chunk_overlap,
            "hybrid_alpha": _pick(row.hybrid_alpha, self.settings.hybrid_alpha),
            "score_threshold": _pick(row.score_threshold, self.settings.score_threshold),
            "top_k": _pick(row.top_k, self.settings.top_k), "prompt": row.prompt or "",
            "rebuilding": row.building is not None, "updated_at": row.updated_at,
        }

    def files(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(FileRow).where(FileRow.kb_id == self.id).order_by(FileRow.added_at, FileRow.id))
            return [r.to_dict() for r in rows]

    def params(self, top_k: int | None = None, threshold: float | None = None, mode: str | None = None,
               alpha: float | None = None, row: KBRow | None = None) -> SearchParams:
        """Search parameters: the request's, else the KB's own settings, else the app's."""
        row = row or self.row()
        s = self.settings
        params = SearchParams(
            top_k=_pick(top_k, _pick(row.top_k, s.top_k)),
            threshold=_pick(threshold, _pick(row.score_threshold, s.score_threshold)),
            mode=mode or row.search_mode or s.search_mode,
            alpha=_pick(alpha, _pick(row.hybrid_alpha, s.hybrid_alpha)),
        )
        if params.mode not in MODES:
            raise KBError(f"unknown search mode '{params.mode}': use one of {', '.join(MODES)}")
        if not 0.0 <= params.threshold <= 1.0:
            raise KBError("threshold must be between 0 and 1")
        if params.top_k < 1:
            raise KBError("top_k must be at least 1")
        return params

    def search(self, query: str, top_k: int | None = None, threshold: float | None = None,
               mode: str | None = None, alpha: float | None = None) -> list[Hit]:
        """Hits with scores in [0, 1]; unset parameters come from the KB's own settings, then the app's."""
        query = query.strip()
        for attempt in range(3):
            row = self.row()
            params = self.params(top_k, threshold, mode, alpha, row)
            if not query:
                return []
            try:
                hits = self._search(row, query, params)
            except Exception:
                if attempt < 2 and self.row().generation != row.generation:
                    continue  # a rebuild switched generations (and dropped the old index) under this search
                raise
            if self.row().generation == row.generation:
                break
        return hits

    def _search(self, row: KBRow, query: str, params: SearchParams) -> list[Hit]:
        want = params.top_k
        qvec = self._embedder(row).encode_query(query) if params.mode != "keyword" else None
        candidates = self.manager.index.search(row.index_name(), qvec, query, max(CANDIDATES, want), params.mode)
        ranked = fuse(candidates, params.mode, params.alpha)
        hits = self._hits(row, ranked)
        rerank = self.manager.reranker()
        if rerank is not None and hits:
            hits = rerank(query, hits[: max(want * 4, 20)])
        return [h for h in hits if h.score >= params.threshold][:want]

    def _hits(self, row: KBRow, ranked: list[tuple[int, float, float | None, float | None]]) -> list[Hit]:
        ids = [cid for cid, *_ in ranked]
        with self.db.read() as s:
            found = {c.id: (c, f) for c, f in s.execute(
                select(ChunkRow, FileRow).join(FileRow, ChunkRow.file_id == FileRow.id)
                .where(ChunkRow.id.in_(ids), ChunkRow.generation == row.generation)).tuples()}
        hits = []
        for cid, score, dense, keyword in ranked:
            if cid not in found:  # an index entry whose row a concurrent delete removed; reconcile drops it
                continue
            c, f = found[cid]
            hits.append(Hit(
                text=c.text, score=round(score, 4), file=f.name, file_id=f.sha256 or "", page=c.page,
                heading=c.heading, chunk_id=cid, kb=self.name,
                dense_score=None if dense is None else round(dense, 4),
                keyword_score=None if keyword is None else round(keyword, 4),
            ))
        return hits

    # --- settings ---------------------------------------------------------------------------
    def update(self, **values: Any) -> dict[str, Any]:
        """Change the KB's own settings (``KB_SETTINGS``; ``None`` = follow the app, or no KB prompt). Chunking
        changes only with a rebuild, so every chunk of a KB is cut the same way."""
        _check_kb_settings(values, KB_SETTINGS)
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = time.time()
        return self.info()

    # --- writing: jobs ----------------------------------------------------------------------
    def submit_ingest(self, paths: Sequence[Path | str], names: Sequence[str] | None = None,
                      replace: bool = False, reserve: bool = False) -> dict[str, Any]:
        """Store the files' bytes in the database and queue an ingest job; returns the job at once.
        ``names`` are the files' identities (upload names, or paths relative to an ingested folder)."""
        paths = [Path(p) for p in paths]
        names = list(names) if names is not None else [p.name for p in paths]
        if len(names) != len(paths):
            raise KBError("names and paths differ in length")
        items: list[dict[str, Any]] = []
        for path, name in zip(paths, names, strict=True):
            item: dict[str, Any] = {"name": safe_file_name(name)}
            try:
                size = path.stat().st_size
                if size > self.settings.max_file_mb * 1024 * 1024:
                    raise LoadError(f"too large: {size / 2**20:.1f} MB > limit {self.settings.max_file_mb} MB")
                item |= {"sha256": self.manager.store_blob(path.read_bytes()), "size": size}
            except LoadError as e:
                item["error"] = e.reason
            except OSError as e:
                item["error"] = f"unreadable: {e.strerror or e}"
            items.append(item)
        return self.manager.jobs.submit("ingest", self.row(), {"files": items, "replace": bool(replace)}, reserve)

    def ingest(self, paths: Sequence[Path | str], names: Sequence[str] | None = None,
               progress: Progress | None = None, replace: bool = False) -> list[FileResult]:
        """Index files and wait for the result (the job runs in this thread unless another process has it)."""
        job = self.submit_ingest(paths, names, replace, reserve=True)
        return self._wait(job, progress)

    def submit_documents(self, docs: Sequence[Any], replace: bool = False, reserve: bool = False) -> dict[str, Any]:
        """Queue an ingest job for already-extracted documents (LangChain ``Document``s: ``page_content`` and
        ``metadata`` with ``source``, ``page``, ``heading``/``title``). Each source becomes one stored file
        (a ``.kbdocs`` bundle, see ``kb.loaders.bundle``), so dedup, chunking and job semantics are an upload's."""
        from kb.loaders.bundle import make_bundles

        bundles = make_bundles(docs)
        if not bundles:
            raise KBError("no documents to add")
        items: list[dict[str, Any]] = []
        for name, data in bundles:
            item: dict[str, Any] = {"name": safe_file_name(name)}
            if len(data) > self.settings.max_file_mb * 1024 * 1024:
                item["error"] = f"too large: {len(data) / 2**20:.1f} MB > limit {self.settings.max_file_mb} MB"
            else:
                item |= {"sha256": self.manager.store_blob(data), "size": len(data)}
            items.append(item)
        return self.manager.jobs.submit("ingest", self.row(), {"files": items, "replace": bool(replace)}, reserve)

    def add_documents(self, docs: Sequence[Any], progress: Progress | None = None,
                      replace: bool = False) -> list[FileResult]:
        """Index documents and wait for the per-file (per-source) results, like ``ingest``."""
        job = self.submit_documents(docs, replace, reserve=True)
        return self._wait(job, progress)

    def submit_rebuild(self, embedding_model: str | None = None, chunk_size: int | None = None,
                       chunk_overlap: int | None = None, reserve: bool = False) -> dict[str, Any]:
        row = self.row()
        model = embedding_model or row.embedding_model
        target = {"embedding_model": model, "dim": self.manager.embedder(model).dim,
                  "chunk_size": _pick(chunk_size, row.chunk_size),
                  "chunk_overlap": _pick(chunk_overlap, row.chunk_overlap), "title_prefix": row.title_prefix}
        _check_kb_settings(target, tuple(target))
        return self.manager.jobs.submit("rebuild", row, {"target": target}, reserve)

    def rebuild(self, progress: Progress | None = None, embedding_model: str | None = None,
                chunk_size: int | None = None, chunk_overlap: int | None = None) -> list[FileResult]:
        """Re-index every stored file into a new index beside the live one; switch when complete."""
        job = self.submit_rebuild(embedding_model, chunk_size, chunk_overlap, reserve=True)
        return self._wait(job, progress)

    def _wait(self, submitted: dict[str, Any], progress: Progress | None) -> list[FileResult]:
        job = self.manager.jobs.wait(submitted["id"], progress, reservation=submitted.get("reservation"))
        if job["status"] == "failed":
            raise KBError(job["error"] or "the job failed")
        if job["status"] == "cancelled":
            raise KBError("the job was cancelled")
        # In the order the files were given (results are recorded as files finish, failures first).
        return [FileResult.from_dict(r) for r in sorted(job["result"] or [], key=lambda r: r.get("index", 0))]

    # --- writing: deletes -----------------------------------------------------------------------
    def delete_file(self, file: str) -> dict[str, Any]:
        """Remove a file (by name, sha256 or row id) and its chunks in every generation."""
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            q = select(FileRow).where(FileRow.kb_id == self.id)
            matches = [f for f in s.scalars(q) if file in (f.name, f.sha256, f"failed:{f.name}", str(f.id))]
            if not matches:
                raise KBNotFound(f"no file '{file}' in knowledge base '{self.name}'")
            removed = [f.to_dict() for f in matches]
            gone = _delete_files(s, [f.id for f in matches])
            row.updated_at = time.time()
            indexes = _index_names(row)
        self.manager.drop_chunks(indexes, gone)
        self.manager.collect_blobs()
        return {"removed": removed}

    # --- the jobs' work -------------------------------------------------------------------------
    def run_ingest(self, ctx: JobContext) -> None:
        """Parse and split in a reader thread (the loaders themselves run in child processes) while this thread
        embeds and commits, so ingestion runs at the embedder's speed instead of parse + embed in turn."""
        files = ctx.payload["files"]
        replace = bool(ctx.payload.get("replace"))
        done = {r["index"] for r in ctx.results if "index" in r}
        row = self.row()
        cfg = KBSettings.of(row)
        emb = self._embedder(row)
        batch: list[_Loaded] = []
        total = len(files)
        first_of: dict[str, int] = {}  # sha256 -> index of its first file in this job
        outcome: dict[int, FileResult | str] = {}  # index -> its result, or the reason it failed
        with _Reader(self, files, done, cfg, emb) as reader:
            for n, (i, item, loaded, reason) in enumerate(reader, start=len(done)):
                ctx.check()
                ctx.progress(n / max(total, 1), f"{n + 1}/{total} {item['name']}")
                started = reader.started[i]
                sha = item.get("sha256")
                twin = first_of.setdefault(sha, i) if sha else i
                if reason is not None:
                    self._record_failure(ctx, i, item, reason, started)
                    outcome[i] = reason
                    continue
                if twin != i:  # the same bytes earlier in this job: its fate is this file's
                    if twin in {p.index for p in batch}:
                        self._embed_and_commit(ctx, batch, emb, replace, outcome)
                    prior = outcome.get(twin, "failed")
                    if isinstance(prior, FileResult):
                        self._record(ctx, FileResult(name=item["name"], status="duplicate", file_id=sha,
                                                     chunks=prior.chunks,
                                                     duplicate_of=prior.duplicate_of or prior.name), i)
                    else:
                        self._record_failure(ctx, i, item, prior, started)
                    continue
                if loaded is None:  # the reader found its bytes indexed in the KB: still so?
                    dup = self._duplicate(sha)
                    if dup is not None:
                        outcome[i] = FileResult(name=item["name"], status="duplicate", file_id=sha, chunks=dup.chunks,
                                                duplicate_of=dup.name)
                        self._record(ctx, outcome[i], i)
                        continue
                    loaded, reason = reader.load(i, item)  # deleted since
                    if loaded is None:
                        self._record_failure(ctx, i, item, reason or "failed", started)
                        outcome[i] = reason or "failed"
                        continue
                batch.append(loaded)
                if reader.time_to_embed(sum(len(p.chunks) for p in batch)):
                    self._embed_and_commit(ctx, batch, emb, replace, outcome)
            self._embed_and_commit(ctx, batch, emb, replace, outcome)
        ctx.progress(1.0, "done")

    def _indexed(self, shas: set[str]) -> set[str]:
        """Which of these contents are indexed in this KB."""
        out: set[str] = set()
        todo = sorted(shas)
        with self.db.read() as s:
            for at in range(0, len(todo), 500):  # bounded IN lists
                out.update(s.scalars(select(FileRow.sha256).where(
                    FileRow.kb_id == self.id, FileRow.status == "indexed", FileRow.sha256.in_(todo[at:at + 500]))))
        return out

    def _duplicate(self, sha: str, s: Any = None) -> FileRow | None:
        """The indexed file with these bytes, if any: in session ``s``, else in a read of its own."""
        if s is None:
            with self.db.read() as s:
                return self._duplicate(sha, s)
        return s.scalars(select(FileRow).where(FileRow.kb_id == self.id, FileRow.sha256 == sha,
                                               FileRow.status == "indexed")).first()

    def _read(self, i: int, item: dict[str, Any], cfg: KBSettings, emb: Embedder,
              started: float) -> tuple[_Loaded | None, str | None]:
        """A file loaded and chunked, or why it could not be."""
        try:
            return self._load_and_chunk(i, item, cfg, emb, started), None
        except LoadError as e:
            return None, e.reason
        except Exception as e:  # a bug or a library failure must not take the job down
            log.exception("reading %s failed", item["name"])
            return None, f"internal error: {type(e).__name__}: {e}"

    def _load_and_chunk(self, i: int, item: dict[str, Any], cfg: KBSettings, emb: Embedder,
                        started: float) -> _Loaded:
        loaded = self._load(self.manager.read_blob(item["sha256"]), item["name"])
        chunks = chunk_documents(loaded.docs, file_id=item["sha256"], size=cfg.chunk_size,
                                 overlap=cfg.chunk_overlap, max_tokens=emb.max_tokens,
                                 fits_tokens=partial(fits_tokens, emb))
        if not chunks:
            raise LoadError("empty: no text found")
        texts = embed_texts(chunks, loaded.title or Path(item["name"]).stem, cfg.title_prefix)
        return _Loaded(i, item["name"], item["sha256"], item["size"], loaded, chunks, texts, started,
                       self._terms(texts))

    def _terms(self, texts: list[str]) -> list[Counter[str]]:
        """The texts' keyword terms, counted in the reader, while the embedder runs, not in the commit that waits
        for it. When the embedder's threads leave a core free, a loader process counts them: jieba is pure Python,
        and in this thread it holds the GIL the embedding thread needs between torch ops (CMRC's 256 passages, the
        embedder on one of two cores: ratio to the bare embedder 0.76-0.79 -> 0.82-0.84). When the embedder has
        every core, the loader process (at a lower priority) is starved and the embedder waits for it (0.63-0.66 ->
        0.55-0.57), so they are counted here."""
        from kb.loaders.worker import count_terms_pooled

        if _terms_in_loaders(self.settings):
            try:
                return count_terms_pooled(texts, _loader_options(self.settings))
            except LoadError as e:
                log.warning("counting keyword terms in a loader process failed (%s); counting them here", e.reason)
        return [term_counts(t) for t in texts]

    def _embed(self, ctx: JobContext, batch: list[_Loaded], emb: Embedder) -> list[tuple[_Loaded, str]]:
        """Embed a batch; when the batch fails, embed file by file so one bad file fails alone."""
        failures: list[tuple[_Loaded, str]] = []
        try:
            vectors = emb.encode_documents([t for p in batch for t in p.texts])
            offset = 0
            for p in batch:
                p.vectors = vectors[offset:offset + len(p.texts)]
                offset += len(p.texts)
        except Exception:
            log.warning("embedding a batch of %d files failed; retrying file by file", len(batch), exc_info=True)
            for p in batch:
                ctx.check()
                try:
                    p.vectors = emb.encode_documents(p.texts)
                except Exception as e:
                    failures.append((p, f"embedding failed: {type(e).__name__}: {e}"))
        ctx.embedded += sum(len(p.texts) for p in batch if p.vectors is not None)
        return failures

    def _embed_and_commit(self, ctx: JobContext, batch: list[_Loaded], emb: Embedder, replace: bool,
                          outcome: dict[int, FileResult | str] | None = None) -> None:
        if not batch:
            return
        ctx.check()
        outcome = {} if outcome is None else outcome
        for p, reason in self._embed(ctx, batch, emb):
            self._record_failure(ctx, p.index, {"name": p.name, "sha256": p.sha256, "size": p.size}, reason, p.started)
            outcome[p.index] = reason
        outcome.update(self._commit_files(ctx, [p for p in batch if p.vectors is not None], replace))
        batch.clear()

    def _commit_files(self, ctx: JobContext, batch: list[_Loaded], replace: bool) -> dict[int, FileResult]:
        """One transaction for an embedded batch: its files, their chunks and their results; then one index add.
        Per file, the commit (an fsync), the job's result row and the index's own transaction cost ~10 ms on
        SQLite: as much as embedding a small file. A crash loses the batch whole; the job resumes with it."""
        if not batch:
            return {}
        results: dict[int, FileResult] = {}
        ids: list[int] = []
        gone: list[int] = []
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            if row.building is not None:
                raise KBError("a rebuild of this knowledge base is unfinished; it resumes first")  # jobs serialise
            for p in batch:
                # Checked here, under the KB's lock: the reader's check came before other writers' commits.
                dup = self._duplicate(p.sha256, s)
                if dup is not None:
                    results[p.index] = FileResult(name=p.name, status="duplicate", file_id=p.sha256, chunks=dup.chunks,
                                                  duplicate_of=dup.name, seconds=time.monotonic() - p.started)
                    p.vectors = None
                    continue
                name, status, replaced = self._place(s, p.name, replace)
                gone += replaced
                f = FileRow(kb_id=self.id, name=name, sha256=p.sha256, size=p.size, status="indexed",
                            chunks=len(p.chunks), pages=p.loaded.pages, ocr_pages=p.loaded.ocr_pages,
                            title=p.loaded.title, warnings=p.loaded.warnings, added_at=time.time())
                s.add(f)
                s.flush()
                rows = [ChunkRow(kb_id=self.id, file_id=f.id, generation=row.generation, ordinal=c.ordinal,
                                 text=c.text, page=c.page, heading=c.heading) for c in p.chunks]
                s.add_all(rows)
                s.flush()  # the next file's name check sees this one
                ids += [r.id for r in rows]
                results[p.index] = FileResult(name=name, status=status, chunks=len(rows), file_id=p.sha256,
                                              pages=p.loaded.pages, ocr_pages=p.loaded.ocr_pages,
                                              seconds=time.monotonic() - p.started,
                                              renamed_from=p.name if name != p.name else None)
            row.updated_at = time.time()
            self._persist_results(s, ctx, results)
            index = row.index_name()
        self._index_add(index, row.dim, ids, [p for p in batch if p.vectors is not None])
        self.manager.drop_chunks([index], gone)
        return results

    def _index_add(self, index: str, dim: int, ids: list[int], files: list[_Loaded]) -> None:
        """One index add for the chunks of files just committed (``ids`` in their order)."""
        if not files:
            return
        vectors = np.concatenate([p.vectors for p in files if p.vectors is not None])
        self.manager.index.add(index, dim, ids, vectors, [t for p in files for t in p.texts],
                               [c for p in files for c in p.terms])

    def _place(self, s: Any, name: str, replace: bool) -> tuple[str, str, list[int]]:
        """The name a new file takes and its status, deleting what it takes the place of: a failed file of that
        name (a new try), or with ``replace`` an indexed one; else it is numbered ("a (2).txt").
        Returns (name, status, chunk ids to drop from the index)."""
        same = s.scalars(select(FileRow).where(FileRow.kb_id == self.id, FileRow.name == name)).first()
        if same is None:
            return name, "indexed", []
        if same.status == "failed":
            return name, "indexed", _delete_files(s, [same.id])
        if replace:
            return name, "replaced", _delete_files(s, [same.id])
        taken = set(s.scalars(select(FileRow.name).where(FileRow.kb_id == self.id)))
        n = 2
        while _numbered(name, n) in taken:
            n += 1
        return _numbered(name, n), "indexed", []

    def _persist_results(self, s: Any, ctx: JobContext, results: dict[int, FileResult]) -> None:
        from kb.db import JobRow

        ctx.results.extend(r.to_dict() | {"index": i} for i, r in results.items())
        job = s.get(JobRow, ctx.job_id)
        if job is not None:
            job.result = list(ctx.results)
            job.heartbeat_at = time.time()

    def _record(self, ctx: JobContext, result: FileResult, index: int) -> None:
        with self.db.session() as s:
            self._persist_results(s, ctx, {index: result})

    def _record_failure(self, ctx: JobContext, index: int, item: dict[str, Any], reason: str,
                        started: float) -> None:
        """Report a failed file; keep a failed row (for a later retry) unless an indexed file has its name."""
        result = FileResult(name=item["name"], status="failed", error=reason, file_id=item.get("sha256"),
                            seconds=time.monotonic() - started)
        with self.db.session() as s:
            self.db.lock_kb(s, self.id)
            same = s.scalars(select(FileRow).where(FileRow.kb_id == self.id, FileRow.name == item["name"])).first()
            if same is None:
                s.add(FileRow(kb_id=self.id, name=item["name"], sha256=item.get("sha256"), size=item.get("size"),
                              status="failed", error=reason, chunks=0, added_at=time.time()))
            elif same.status == "failed":
                same.sha256, same.size, same.error = item.get("sha256"), item.get("size"), reason
            self._persist_results(s, ctx, {index: result})

    def run_rebuild(self, ctx: JobContext) -> None:
        target = ctx.payload["target"]
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            if row.building is None:
                row.building, row.building_settings = row.generation + 1, target
            gen, cfg = row.building, KBSettings(**(row.building_settings or target))
            live, shadow = row.generation, row.index_name(row.building)
        self.manager.reconcile(self, only_generation=gen)  # a resumed rebuild continues from a consistent shadow
        emb = self.manager.embedder(cfg.embedding_model)
        with self.db.read() as s:
            # Indexed files only: a failed one is retried by uploading it again, not by every rebuild.
            files = list(s.scalars(select(FileRow).where(FileRow.kb_id == self.id, FileRow.status == "indexed")
                                   .order_by(FileRow.id)))
            done = set(s.scalars(select(ChunkRow.file_id).where(ChunkRow.kb_id == self.id,
                                                                ChunkRow.generation == gen).distinct()))
        reported = {r["index"] for r in ctx.results if "index" in r}
        skip = {i for i, f in enumerate(files) if f.id in done or i in reported}
        batch: list[tuple[FileRow, _Loaded, str | None]] = []
        # As ingestion: files re-read in a thread ahead of this one, embedded and committed a batch at a time.
        with _RebuildReader(self, files, skip, cfg, emb, live) as reader:
            for i, f, p, error in reader:
                ctx.check()
                ctx.progress(i / max(len(files), 1), f"{i + 1}/{len(files)} {f.name}")
                batch.append((f, p, error))
                if reader.time_to_embed(sum(len(q.chunks) for _, q, _ in batch)):
                    self._rebuild_batch(ctx, batch, emb, gen, shadow, cfg)
            self._rebuild_batch(ctx, batch, emb, gen, shadow, cfg)
        self._switch(gen, cfg)
        ctx.progress(1.0, "done")

    def _rebuild_batch(self, ctx: JobContext, batch: list[tuple[FileRow, _Loaded, str | None]], emb: Embedder,
                       gen: int, shadow: str, cfg: KBSettings) -> None:
        """Embed re-read files together, then one transaction for their chunks in the new generation and one add
        to the shadow index. An embedding error fails the rebuild; the live KB is untouched."""
        if not batch:
            return
        ctx.check()
        vectors = emb.encode_documents([t for _, p, _ in batch for t in p.texts])
        ctx.embedded += len(vectors)
        ids: list[int] = []
        kept: list[_Loaded] = []
        offset = 0
        with self.db.session() as s:
            self.db.lock_kb(s, self.id)
            results: dict[int, FileResult] = {}
            for f, p, error in batch:
                p.vectors, offset = vectors[offset:offset + len(p.texts)], offset + len(p.texts)
                live_row = s.get(FileRow, f.id)
                if live_row is None:  # deleted meanwhile
                    continue
                rows = [ChunkRow(kb_id=self.id, file_id=f.id, generation=gen, ordinal=c.ordinal, text=c.text,
                                 page=c.page, heading=c.heading) for c in p.chunks]
                s.add_all(rows)
                s.flush()
                ids += [r.id for r in rows]
                kept.append(p)
                msg = f"could not be re-read ({error}); kept its {len(rows)} old chunks" if error else None
                results[p.index] = FileResult(
                    name=f.name, status="failed" if error else "indexed", chunks=len(rows), file_id=f.sha256,
                    error=msg, pages=p.loaded.pages, ocr_pages=p.loaded.ocr_pages,
                    seconds=time.monotonic() - p.started, kept_old=bool(error))
                live_row.title = p.loaded.title if not error else f.title
            self._persist_results(s, ctx, results)
        self._index_add(shadow, cfg.dim, ids, kept)
        batch.clear()

    def _old_chunks(self, f: FileRow, live: int, cfg: KBSettings, i: int, started: float) -> _Loaded:
        with self.db.read() as s:
            rows = list(s.scalars(select(ChunkRow).where(ChunkRow.file_id == f.id, ChunkRow.generation == live)
                                  .order_by(ChunkRow.ordinal)))
        chunks = [Chunk(id=0, file_id=f.sha256 or "", text=r.text, page=r.page, heading=r.heading, ordinal=r.ordinal)
                  for r in rows]
        texts = embed_texts(chunks, _title(f), cfg.title_prefix)
        loaded = LoadedFile(docs=[], title=f.title, pages=f.pages, ocr_pages=list(f.ocr_pages or []))
        return _Loaded(i, f.name, f.sha256 or "", f.size or 0, loaded, chunks, texts, started, self._terms(texts))

    def _switch(self, gen: int, cfg: KBSettings) -> None:
        """Make the shadow generation live in one transaction; the old index is dropped after."""
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            old = row.generation
            counts = dict(s.execute(select(ChunkRow.file_id, func.count()).where(
                ChunkRow.kb_id == self.id, ChunkRow.generation == gen).group_by(ChunkRow.file_id)).tuples().all())
            for f in s.scalars(select(FileRow).where(FileRow.kb_id == self.id)):
                if f.id in counts:
                    f.chunks, f.status = counts[f.id], "indexed"
                    f.error = None
            s.execute(delete(ChunkRow).where(ChunkRow.kb_id == self.id, ChunkRow.generation == old))
            row.generation, row.building, row.building_settings = gen, None, None
            row.embedding_model, row.dim = cfg.embedding_model, cfg.dim
            row.chunk_size, row.chunk_overlap = cfg.chunk_size, cfg.chunk_overlap
            row.updated_at = time.time()
            s.merge(DroppedIndex(name=row.index_name(old)))
        self.manager.drop_retired_indexes()

    def abandon_rebuild(self) -> None:
        """Forget an unfinished rebuild (cancelled or failed): the live KB was never touched."""
        with self.db.session() as s:
            row = self.db.lock_kb(s, self.id)
            if row.building is None:
                return
            s.execute(delete(ChunkRow).where(ChunkRow.kb_id == self.id, ChunkRow.generation == row.building))
            s.merge(DroppedIndex(name=row.index_name(row.building)))
            row.building, row.building_settings = None, None
        self.manager.drop_retired_indexes()

    def _load(self, data: bytes, name: str) -> LoadedFile:
        from kb.loaders.worker import load_file_pooled

        with tempfile.NamedTemporaryFile(dir=self.settings.tmp_dir, suffix=_ext(name)) as tmp:
            tmp.write(data)
            tmp.flush()
            return load_file_pooled(Path(tmp.name), name=Path(name).name, options=_loader_options(self.settings))


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a container's cpuset sets it)."""
    return len(os.sched_getaffinity(0))


def _terms_in_loaders(s: Settings) -> bool:
    """Whether loader processes count keyword terms: only with a core beyond the embedder's threads (``_terms``)."""
    return usable_cores() > s.n_threads


def _loader_options(s: Settings) -> LoaderOptions:
    return LoaderOptions(max_pages=s.max_pages, ocr=s.ocr, max_file_mb=s.max_file_mb, timeout_s=s.file_timeout_s)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _index_names(row: KBRow) -> list[str]:
    return [row.index_name()] + ([row.index_name(row.building)] if row.building is not None else [])


def _delete_files(s: Any, file_ids: list[int]) -> list[int]:
    """Delete files and their chunks (every generation); return the chunk ids to drop from the indexes."""
    if not file_ids:
        return []
    ids = list(s.scalars(select(ChunkRow.id).where(ChunkRow.file_id.in_(file_ids))))
    s.execute(delete(ChunkRow).where(ChunkRow.file_id.in_(file_ids)))
    s.execute(delete(FileRow).where(FileRow.id.in_(file_ids)))
    return ids


# What a KB may set for itself after creation (chunking and the model change only with a rebuild).
KB_SETTINGS = ("search_mode", "hybrid_alpha", "score_threshold", "top_k", "prompt")
MAX_PROMPT_CHARS = 4000


def _check_kb_settings(values: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = set(values) - set(allowed)
    if unknown:
        raise KBError(f"unknown knowledge-base setting(s): {', '.join(sorted(unknown))}")
    prompt = values.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise KBError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    mode = values.get("search_mode")
    if mode is not None and mode not in MODES:
        raise KBError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
    for key, lo, hi in (("hybrid_alpha", 0.0, 1.0), ("score_threshold", 0.0, 1.0), ("top_k", 1, 50),
                        ("chunk_size", 50, 4000), ("chunk_overlap", 0, 1000)):
        v = values.get(key)
        if v is not None and not lo <= v <= hi:
            raise KBError(f"{key} must be between {lo} and {hi}")
    size = values.get("chunk_size")
    overlap = values.get("chunk_overlap")
    if size is not None and overlap is not None and overlap >= size:
        raise KBError("chunk_overlap must be smaller than chunk_size")


class KnowledgeBaseManager:
    def __init__(self, settings: Settings, workers: int = 0, reconcile: bool = True):
        self.settings = settings
        settings.prepare_dirs()
        self.db = Database(settings.database_url or default_url(settings.system_dir))
        self.index: IndexBackend = create_index(settings)
        self.jobs = JobQueue(self.db, {"ingest": self._job("run_ingest"), "rebuild": self._job("run_rebuild")},
                            settings.max_queued_jobs, settings.job_stale_seconds)
        self._blob_lock = threading.Lock()
        if reconcile:
            from kb.legacy import import_legacy

            import_legacy(self)
            self.reconcile_all()
        if workers:
            self.jobs.start_workers(workers)
            threading.Thread(target=self.warm, daemon=True, name="kb-warm").start()

    def warm(self) -> None:
        """Start what a first ingestion would otherwise wait for, with the embedder idle: a loader process (Python
        and PyMuPDF imported) and jieba's dictionary (in the app, and in that process when it will count terms)."""
        from kb.loaders.worker import count_terms_pooled, prestart

        options = _loader_options(self.settings)
        prestart(options)
        term_counts("预热")  # for questions
        if _terms_in_loaders(self.settings):  # and in the warm worker, before its memory baseline is taken
            with contextlib.suppress(LoadError):  # counted in the app then
                count_terms_pooled(["预热"], options)

    def _job(self, method: str) -> Callable[[JobContext], None]:
        def run(ctx: JobContext) -> None:
            kb = self._by_id(ctx.kb_id)
            try:
                getattr(kb, method)(ctx)
            except Exception:
                # A failed or cancelled rebuild leaves the live KB as it was. (A killed process raises nothing:
                # its unfinished rebuild is resumed by whoever claims the job next.)
                if method == "run_rebuild":
                    kb.abandon_rebuild()
                raise
        return run

    def embedder(self, spec: str | None = None) -> Embedder:
        from kb.remote import remote_options  # keys and request options of a remote model, from settings

        return create_embedder(spec or self.settings.embedding_model, self.settings.embed_batch_size,
                               self.settings.n_threads, remote=remote_options(self.settings, "embedding"),
                               models_dir=self.settings.models_dir, precision=self.settings.embedding_precision)

    def reranker(self) -> Callable[[str, list[Hit]], list[Hit]] | None:
        from kb.remote import remote_options
        from kb.rerank import get_reranker

        return get_reranker(self.settings.rerank_model, remote=remote_options(self.settings, "rerank"))

    # --- KBs ----------------------------------------------------------------------------------------
    def _by_id(self, kb_id: int) -> KnowledgeBase:
        with self.db.read() as s:
            row = s.get(KBRow, kb_id)
        if row is None:
            raise KBNotFound("the knowledge base was deleted")
        return KnowledgeBase(self, row)

    def names(self) -> list[str]:
        with self.db.read() as s:
            return list(s.scalars(select(KBRow.name).order_by(KBRow.name)))

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
            self.get(name)
            return True
        except KBError:
            return False

    def get(self, name: str) -> KnowledgeBase:
        name = validate_kb_name(name)
        with self.db.read() as s:
            row = s.scalars(select(KBRow).where(KBRow.name == name)).first()
        if row is None:
            raise KBNotFound(f"knowledge base '{name}' does not exist")
        return KnowledgeBase(self, row)

    def create(self, name: str, embedding_model: str | None = None, search_mode: str | None = None,
               exist_ok: bool = False, chunk_size: int | None = None, chunk_overlap: int | None = None,
               owner_id: int | None = None, visibility: str | None = None, **settings: Any) -> KnowledgeBase:
        name = validate_kb_name(name)
        values = {"search_mode": search_mode, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap, **settings}
        _check_kb_settings(values, (*KB_SETTINGS, "chunk_size", "chunk_overlap"))
        if self.exists(name):
            if exist_ok:
                return self.get(name)
            raise KBConflict(f"knowledge base '{name}' already exists")
        model = embedding_model or self.settings.embedding_model
        emb = self.embedder(model)
        s_ = self.settings
        row = KBRow(name=name, embedding_model=model, dim=emb.dim,
                    chunk_size=_pick(chunk_size, s_.chunk_size), chunk_overlap=_pick(chunk_overlap, s_.chunk_overlap),
                    title_prefix=s_.title_prefix, generation=1, created_at=time.time(), updated_at=time.time(),
                    owner_id=owner_id, visibility=visibility,
                    **{k: values.get(k) for k in KB_SETTINGS})
        if row.chunk_overlap >= row.chunk_size:
            raise KBError("chunk_overlap must be smaller than chunk_size")
        try:
            with self.db.session() as s:
                if s.scalars(select(KBRow.id).where(KBRow.name == name)).first() is not None:
                    raise KBConflict(f"knowledge base '{name}' already exists")
                s.add(row)
        except KBConflict:
            if exist_ok:
                return self.get(name)
            raise
        return KnowledgeBase(self, row)

    def delete(self, name: str) -> None:
        kb = self.get(name)
        with self.db.session() as s:
            row = self.db.lock_kb(s, kb.id)
            for index in _index_names(row):
                s.merge(DroppedIndex(name=index))
            s.execute(delete(ChunkRow).where(ChunkRow.kb_id == kb.id))
            s.execute(delete(FileRow).where(FileRow.kb_id == kb.id))
            s.delete(row)
        self.drop_retired_indexes()
        self.collect_blobs()

    # --- storage helpers ------------------------------------------------------------------------------
    def store_blob(self, data: bytes) -> str:
        sha = sha256_bytes(data)
        with self._blob_lock, self.db.session() as s:
            if s.get(BlobRow, sha) is None:
                s.add(BlobRow(sha256=sha, size=len(data), data=data))
        return sha

    def read_blob(self, sha: str) -> bytes:
        with self.db.read() as s:
            blob = s.get(BlobRow, sha)
            if blob is None:
                raise LoadError("the stored copy of this file is missing")
            return bytes(blob.data)

    def collect_blobs(self) -> None:
        """Delete file bytes no file refers to, unless a job that may still need them is pending."""
        from kb.db import JobRow

        with self.db.session() as s:
            if s.scalars(select(JobRow.id).where(JobRow.status.in_(("queued", "running")))).first():
                return
            used = select(FileRow.sha256).where(FileRow.sha256.is_not(None))
            s.execute(delete(BlobRow).where(BlobRow.sha256.not_in(used)))

    def drop_chunks(self, indexes: list[str], ids: list[int]) -> None:
        if ids:
            for index in indexes:
                self.index.delete(index, ids)

    def drop_retired_indexes(self) -> None:
        with self.db.read() as s:
            names = list(s.scalars(select(DroppedIndex.name)))
        for name in names:
            self.index.drop(name)
            with self.db.session() as s:
                s.execute(delete(DroppedIndex).where(DroppedIndex.name == name))

    # --- reconciliation -------------------------------------------------------------------------------
    def reconcile_all(self) -> dict[str, dict[str, int]]:
        self.drop_retired_indexes()
        report = {}
        for name in self.names():
            try:
                report[name] = self.reconcile(self.get(name))
            except KBError:
                continue
        return report

    def reconcile(self, kb: KnowledgeBase, only_generation: int | None = None) -> dict[str, int]:
        """Make each index of ``kb`` hold exactly its generation's chunk rows: re-add what is missing
        (re-embedded from the stored text), drop what has no row."""
        row = kb.row()
        gens = [only_generation] if only_generation is not None else (
            [row.generation] + ([row.building] if row.building is not None else []))
        added = removed = 0
        for gen in gens:
            cfg = KBSettings(**row.building_settings) if gen == row.building and row.building_settings \
                else KBSettings.of(row)
            index = row.index_name(gen)
            with self.db.read() as s:
                db_ids = np.fromiter(s.scalars(select(ChunkRow.id).where(
                    ChunkRow.kb_id == kb.id, ChunkRow.generation == gen)), dtype=np.int64)
            idx_ids = self.index.ids(index)
            extra = np.setdiff1d(idx_ids, db_ids)
            missing = np.setdiff1d(db_ids, idx_ids)
            if len(extra):
                self.index.delete(index, extra.tolist())
                removed += len(extra)
            for start in range(0, len(missing), 1024):
                part = missing[start:start + 1024].tolist()
                with self.db.read() as s:
                    pairs = list(s.execute(select(ChunkRow, FileRow).join(FileRow, ChunkRow.file_id == FileRow.id)
                                           .where(ChunkRow.id.in_(part))).tuples())
                texts = [embed_texts([Chunk(id=c.id, file_id="", text=c.text, heading=c.heading)], _title(f),
                                     cfg.title_prefix)[0] for c, f in pairs]
                if texts:
                    vectors = self.embedder(cfg.embedding_model).encode_documents(texts)
                    self.index.add(index, cfg.dim, [c.id for c, _ in pairs], vectors, texts)
                    added += len(texts)
        if added or removed:
            log.warning("reconciled knowledge base '%s': re-added %d chunks, removed %d", kb.name, added, removed)
        return {"added": added, "removed": removed}

    # --- export / import -----------------------------------------------------------------------------
    def export_kb(self, name: str, dest: Path) -> dict[str, Any]:
        """Write a KB (settings, files with their bytes, chunks, vectors) to one zip file."""
        kb = self.get(name)
        row = kb.row()
        with self.db.read() as s:
            files = list(s.scalars(select(FileRow).where(FileRow.kb_id == kb.id).order_by(FileRow.id)))
            chunks = list(s.scalars(select(ChunkRow).where(ChunkRow.kb_id == kb.id,
                                                           ChunkRow.generation == row.generation)
                                    .order_by(ChunkRow.id)))
        vectors = self.index.vectors(row.index_name(), [c.id for c in chunks]) if chunks else \
            np.zeros((0, row.dim), dtype=np.float32)
        meta = {"format": EXPORT_FORMAT, "name": row.name, "embedding_model": row.embedding_model, "dim": row.dim,
                "chunk_size": row.chunk_size, "chunk_overlap": row.chunk_overlap, "title_prefix": row.title_prefix,
                **{k: getattr(row, k) for k in KB_SETTINGS}}
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("kb.json", json.dumps(meta, ensure_ascii=False, indent=1))
            z.writestr("files.jsonl", "".join(json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in files))
            z.writestr("chunks.jsonl", "".join(json.dumps(
                {"file": c.file_id, "ordinal": c.ordinal, "text": c.text, "page": c.page, "heading": c.heading},
                ensure_ascii=False) + "\n" for c in chunks))
            buf = io.BytesIO()
            np.save(buf, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
            z.writestr("vectors.npy", buf.getvalue())
            for sha in sorted({f.sha256 for f in files if f.sha256}):
                z.writestr(f"blobs/{sha}", self.read_blob(sha))
        return {"name": row.name, "files": len(files), "chunks": len(chunks), "path": str(dest)}

    def import_kb(self, src: Path, name: str | None = None) -> KnowledgeBase:
        """Recreate an exported KB in this deployment's database and index, without re-embedding."""
        try:
            z = zipfile.ZipFile(src)
        except (OSError, zipfile.BadZipFile) as e:
            raise KBError(f"not a knowledge-base export: {e}") from None
        with z:
            try:
                meta = json.loads(z.read("kb.json"))
                if meta.get("format") != EXPORT_FORMAT:
                    raise KBError(f"unknown export format {meta.get('format')!r}")
                files = [json.loads(line) for line in z.read("files.jsonl").decode().splitlines() if line]
                chunks = [json.loads(line) for line in z.read("chunks.jsonl").decode().splitlines() if line]
                vectors = np.load(io.BytesIO(z.read("vectors.npy")), allow_pickle=False)
                blobs = {n.split("/", 1)[1]: z.read(n) for n in z.namelist() if n.startswith("blobs/")}
            except (KeyError, ValueError) as e:
                raise KBError(f"damaged knowledge-base export: {e}") from None
        for sha, data in blobs.items():
            if sha256_bytes(data) != sha:
                raise KBError(f"damaged knowledge-base export: file {sha[:12]} does not match its hash")
        return self.load_kb(meta, files, chunks, vectors, blobs, name)

    def load_kb(self, meta: dict[str, Any], files: list[dict[str, Any]], chunks: list[dict[str, Any]],
                vectors: np.ndarray, blobs: dict[str, bytes], name: str | None = None) -> KnowledgeBase:
        """Create a KB from its parts (an export, or an old-format folder): ``files`` as ``FileRow.to_dict``,
        ``chunks`` with the ``id`` of their file, ``vectors`` aligned with ``chunks``; nothing is re-embedded."""
        if len(vectors) != len(chunks) or (len(vectors) and vectors.shape[1] != meta["dim"]):
            raise KBError("damaged knowledge base: vectors and chunks disagree")
        kb = self.create(name or meta["name"], embedding_model=meta["embedding_model"],
                         chunk_size=meta.get("chunk_size"), chunk_overlap=meta.get("chunk_overlap"),
                         **{k: meta.get(k) for k in KB_SETTINGS})
        if kb.embedder.dim != meta["dim"]:
            self.delete(kb.name)
            raise KBError(f"embedding model {meta['embedding_model']} here has dimension {kb.embedder.dim}, "
                          f"the knowledge base's vectors {meta['dim']}")
        for data in blobs.values():
            self.store_blob(data)
        with self.db.session() as s:
            row = self.db.lock_kb(s, kb.id)
            row.title_prefix = bool(meta.get("title_prefix", True))
            file_ids = {}
            for f in files:
                new = FileRow(kb_id=kb.id, name=f["name"], sha256=f["sha256"], size=f.get("size"),
                              status=f["status"], error=f.get("error"), chunks=f.get("chunks", 0),
                              pages=f.get("pages"), ocr_pages=f.get("ocr_pages") or [], title=f.get("title"),
                              warnings=f.get("warnings") or [], added_at=f.get("added_at") or time.time())
                s.add(new)
                s.flush()
                file_ids[f["id"]] = new
            rows = [ChunkRow(kb_id=kb.id, file_id=file_ids[c["file"]].id, generation=row.generation,
                             ordinal=c["ordinal"], text=c["text"], page=c.get("page"), heading=c.get("heading"))
                    for c in chunks]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
            titles = [_title(file_ids[c["file"]]) for c in chunks]
            index, dim, prefix = row.index_name(), row.dim, row.title_prefix
        texts = [embed_texts([Chunk(id=0, file_id="", text=c["text"], heading=c.get("heading"))], t, prefix)[0]
                 for c, t in zip(chunks, titles, strict=True)]
        for start in range(0, len(ids), 4096):
            self.index.add(index, dim, ids[start:start + 4096], vectors[start:start + 4096], texts[start:start + 4096])
        return kb

    def close(self) -> None:
        self.jobs.stop()
        self.index.close()
        self.db.close()

