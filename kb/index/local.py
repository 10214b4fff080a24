"""Single-machine index backend: one SQLite file per index, vectors mirrored in memory for search.

Layout of ``root/<index>.sqlite`` (WAL mode):

- ``chunks(chunk_id, n, terms, vec)``: the vector (float32 bytes), the token count and the distinct terms
  (JSON; what a delete needs to find the chunk's postings without re-tokenising).
- ``post(term, chunk_id, tf, n)``: BM25 postings clustered by term, so a query reads only its terms' ranges.
  The chunk length ``n`` is repeated here so scoring needs no join (a random lookup per posting).
- ``terms(term, df)`` and ``meta`` (dim, N, total length): the statistics BM25 needs, kept up to date.
- ``log(seq, chunk_id)``: which chunks each commit touched, so an in-memory copy catches up by reading
  only what changed (the current ``chunks`` row says whether the chunk is now present and its vector).

Why this shape: a commit (``add``/``delete``) is one SQLite transaction touching only the rows of the
changed chunks, so its cost follows the change, not the index; a process killed mid-commit leaves the
last committed state (SQLite's journal). No pickle anywhere.

``synchronous=NORMAL``: in WAL mode the database is consistent after any crash and durable against a
killed process; on power loss the last few commits may roll back, which ``kb.service``'s start-up
reconciliation (DB = truth, ``ids()`` compared) repairs. FULL would add an fsync to every commit.

Dense search keeps vectors in a plain float32 matrix with an id -> row map instead of a FAISS
``IndexIDMap2``: measured on 1M x 384, ``remove_ids`` of 20 ids costs ~300 ms there (it compacts the
whole array and rebuilds its map) against O(change) for a swap-with-last here, and a numpy mat-vec
(BLAS on all cores) searched in ~100 ms against ~200 ms for ``IndexFlatIP.search``. Keyword scores are
computed in SQL from the postings of the query terms only; nothing per-term or per-text is held in memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kb.index import MODES, Candidate, check_index_name
from kb.keyword import _B, _K1, term_counts, tokenize

_LOG_KEEP = 100_000  # log rows kept; a reader further behind reloads in full (as costly as replaying)
_WAL_MAX = 64 * 2**20  # bytes; see _Handle.bound_wal
_BUSY_MS = 60_000  # wait this long for another process's write transaction before failing
_F32 = np.dtype("<f4")  # vectors are stored little-endian whatever the host

_SCHEMA = """
CREATE TABLE meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE chunks(chunk_id INTEGER PRIMARY KEY, n INTEGER NOT NULL, terms TEXT NOT NULL, vec BLOB NOT NULL);
CREATE TABLE post(term TEXT NOT NULL, chunk_id INTEGER NOT NULL, tf INTEGER NOT NULL, n INTEGER NOT NULL,
                  PRIMARY KEY (term, chunk_id)) WITHOUT ROWID;
CREATE TABLE terms(term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE log(seq INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id INTEGER NOT NULL);
"""

# BM25 of the chunks containing the query terms ?1 ([term, idf * (k1 + 1)] pairs), top ?5, optionally only the
# chunk ids ?6. Same formula as kb.keyword.BM25Index: norm = k1 * (1 - b + b * n / avg), ?2 = k1, ?3 = b, ?4 = avg.
_BM25_SQL = """
WITH q(term, w) AS (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
SELECT p.chunk_id, SUM(q.w * p.tf / (p.tf + ?2 * (1 - ?3 + ?3 * p.n / ?4))) AS s
FROM q JOIN post p ON p.term = q.term {only}
GROUP BY p.chunk_id ORDER BY s DESC LIMIT ?5
"""
_ONLY_SQL = "WHERE p.chunk_id IN (SELECT value FROM json_each(?6))"


class _Gone(Exception):
    """The index file was dropped (here or by another process) while in use."""


def _connect(path: Path, create: bool = False) -> sqlite3.Connection:
    # mode=rw: opening a missing index must fail, not create an empty file a reader would then see.
    uri = path.resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    # Autocommit (isolation_level=None): every transaction below is an explicit BEGIN ... COMMIT.
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_MS / 1000)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextlib.contextmanager
def _txn(conn: sqlite3.Connection, kind: str = "") -> Iterator[sqlite3.Connection]:
    """A transaction: ``kind`` IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
    conn.execute(f"BEGIN {kind}")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _json(values: Sequence[object]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


class _Dense:
    """Vectors of one index in memory: row ``i`` of ``mat`` is chunk ``ids[i]``; rows ``>= n`` are spare."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.seq = -1  # last log entry applied; -1: nothing loaded yet
        self._empty(0)

    def _empty(self, cap: int) -> None:
        self.mat = np.empty((max(cap, 16), self.dim), dtype=np.float32)
        self.ids = np.empty(max(cap, 16), dtype=np.int64)
        self.row: dict[int, int] = {}
        self.n = 0

    def upsert(self, cid: int, vec: np.ndarray) -> None:
        i = self.row.get(cid)
        if i is None:
            if self.n == len(self.ids):  # grow by 1/4: amortised O(1) per add, at most 25% spare memory
                cap = self.n + max(16, self.n // 4)
                self.mat = np.resize(self.mat, (cap, self.dim))
                self.ids = np.resize(self.ids, cap)
            i = self.row[cid] = self.n
            self.ids[i] = cid
            self.n += 1
        self.mat[i] = vec

    def remove(self, cid: int) -> None:
        i = self.row.pop(cid, None)
        if i is None:
            return
        last = self.n - 1
        if i != last:  # move the last row into the hole: O(dim), not O(index)
            self.mat[i] = self.mat[last]
            self.ids[i] = self.ids[last]
            self.row[int(self.ids[i])] = i
        self.n = last

    def top(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not self.n:
            return []
        s = self.mat[: self.n] @ q
        best = np.argpartition(-s, k - 1)[:k] if k < self.n else np.arange(self.n)
        return [(int(self.ids[i]), float(s[i])) for i in best]

    def scores(self, q: np.ndarray, cids: Sequence[int]) -> dict[int, float]:
        rows = [(c, self.row[c]) for c in cids if c in self.row]
        if not rows:
            return {}
        s = self.mat[[r for _, r in rows]] @ q
        return {c: float(v) for (c, _), v in zip(rows, s, strict=True)}

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Catch up with the file: apply only log entries newer than ``seq`` (one read snapshot)."""
        with _txn(conn):
            lo, hi = conn.execute("SELECT (SELECT MIN(seq) FROM log), (SELECT MAX(seq) FROM log)").fetchone()
            if hi is None or hi == self.seq:
                return
            if hi < self.seq or self.seq < lo - 1:  # log trimmed past us (or file replaced): reload all
                self._reload(conn)
                self.seq = hi
                return
            changed = [r[0] for r in conn.execute("SELECT DISTINCT chunk_id FROM log WHERE seq > ?", (self.seq,))]
            present = dict(conn.execute(
                "SELECT chunk_id, vec FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                (_json(changed),)))
            for cid in changed:
                if cid in present:
                    self.upsert(cid, np.frombuffer(present[cid], dtype=_F32))
                else:
                    self.remove(cid)
            self.seq = hi

    def _reload(self, conn: sqlite3.Connection) -> None:
        n = conn.execute("SELECT v FROM meta WHERE k = 'n'").fetchone()[0]
        self._empty(n + n // 8)
        dim = self.dim
        cur = conn.execute("SELECT chunk_id, vec FROM chunks")
        while rows := cur.fetchmany(4096):  # in slices: never all rows as Python bytes at once
            b = len(rows)
            self.ids[self.n:self.n + b] = [r[0] for r in rows]
            self.mat[self.n:self.n + b] = np.frombuffer(b"".join(r[1] for r in rows), dtype=_F32).reshape(b, dim)
            self.n += b
        self.row = {int(c): i for i, c in enumerate(self.ids[: self.n])}


class _Handle:
    """One index file opened by this process: a writer connection, pooled reader connections, vectors."""

    def __init__(self, path: Path, st: os.stat_result) -> None:
        self.path = path
        self.inode = (st.st_dev, st.st_ino)  # a drop + re-create by another process changes it
        self.write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self.dense_lock = threading.Lock()  # matrix updates are not safe under a concurrent mat-vec
        self.dense: _Dense | None = None
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self.closed = False

    def writer(self) -> sqlite3.Connection:
        """The writing connection; call with ``write_lock`` held."""
        if self.closed:
            raise _Gone
        if self._writer is None:
            self._writer = _connect(self.path)
            self._writer.execute("PRAGMA cache_size=-16384")  # 16 MiB: postings B-tree pages touched per commit
            self._writer.execute(f"PRAGMA journal_size_limit={_WAL_MAX}")  # shrink the WAL file after a reset
        return self._writer

    def bound_wal(self) -> None:
        """After a commit (``write_lock`` held): keep the WAL file bounded.

        SQLite's automatic checkpoints are PASSIVE and the WAL only restarts from its beginning when a write
        starts after a checkpoint that copied everything. Two processes writing back to back never leave
        such a gap, and the WAL grew to 2.6 GB during a 1M build with two writers. A RESTART checkpoint
        waits for that gap (readers finish, other writers queue on the busy timeout) once per _WAL_MAX bytes,
        so its cost stays proportional to the writes since the last one."""
        wal = self.path.with_name(self.path.name + "-wal")
        with contextlib.suppress(FileNotFoundError):
            if wal.stat().st_size > _WAL_MAX and self._writer is not None:
                self._writer.execute("PRAGMA wal_checkpoint(RESTART)")

    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread alone (SQLite reads run in parallel, each in its own snapshot)."""
        with self._pool_lock:
            if self.closed:
                raise _Gone
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _connect(self.path)
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self.closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    def close(self) -> None:
        with self._pool_lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self.write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with self.dense_lock:
            self.dense = None


class LocalIndex:
    """``IndexBackend`` over SQLite files under ``root``; safe for many threads and several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._handles: dict[str, _Handle] = {}

    def _path(self, index: str) -> Path:
        return self.root / f"{check_index_name(index)}.sqlite"

    def _handle(self, index: str) -> _Handle | None:
        """The open handle for ``index``, re-opened if the file was replaced; None if there is no file."""
        path = self._path(index)
        stale = None
        with self._guard:
            h = self._handles.get(index)
            try:
                st: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                st = None
            if h is not None and (st is None or (st.st_dev, st.st_ino) != h.inode):
                stale, h = self._handles.pop(index), None
            if h is None and st is not None:
                h = self._handles[index] = _Handle(path, st)
        if stale is not None:
            stale.close()  # outside the guard: it waits for a running write
        return h

    def _create(self, index: str, dim: int) -> None:
        """Create the file complete (schema + dim) under a temporary name, then link it into place:
        a reader never sees a half-made index, and of two processes creating it at once one wins."""
        path = self._path(index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        conn = _connect(tmp, create=True)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with _txn(conn):
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [("dim", dim), ("n", 0), ("total", 0)])
        finally:
            conn.close()  # last connection: SQLite checkpoints and removes the WAL, the file stands alone
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
        _fsync_dir(self.root)

    # -- writes -------------------------------------------------------------------------------------------

    def add(self, index: str, dim: int, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str],
            terms: Sequence[Counter[str]] | None = None) -> None:
        vecs = np.ascontiguousarray(vectors, dtype=_F32)
        if vecs.ndim != 2 or vecs.shape != (len(ids), dim) or len(texts) != len(ids) or (
                terms is not None and len(terms) != len(ids)):
            raise ValueError(f"add: {len(ids)} ids, {len(texts)} texts and vectors of shape {vecs.shape} "
                             f"do not match (dim {dim})")
        if not len(ids):
            return
        last = {int(c): i for i, c in enumerate(ids)}  # an id given twice: the later one wins, as in two adds
        # Tokenise before taking the write lock: jieba is the slow part and needs no database.
        docs: list[tuple[int, int, Counter[str], bytes]] = []
        for cid, i in last.items():
            counts = terms[i] if terms is not None else term_counts(texts[i])
            docs.append((cid, sum(counts.values()), counts, vecs[i].tobytes()))
        for attempt in range(3):  # a concurrent drop can close the handle under us: open it again
            h = self._handle(index)
            if h is None:
                self._create(index, dim)
                continue
            try:
                return self._upsert(h, index, dim, docs)
            except _Gone:
                if attempt == 2:
                    raise RuntimeError(f"index {index} keeps being dropped during add") from None
        raise RuntimeError(f"could not create index {index}")

    def _upsert(self, h: _Handle, index: str, dim: int, docs: list[tuple[int, int, Counter[str], bytes]]) -> None:
        with h.write_lock, _txn(h.writer(), "IMMEDIATE") as conn:
            stored = conn.execute("SELECT v FROM meta WHERE k = 'dim'").fetchone()[0]
            if stored != dim:
                raise ValueError(f"index {index} holds {stored}-d vectors, not {dim}-d")
            df, gone, gone_len = self._unindex(conn, [d[0] for d in docs])
            conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)",
                             [(cid, n, _json(counts), vec) for cid, n, counts, vec in docs])
            conn.executemany("INSERT INTO post VALUES (?, ?, ?, ?)",
                             [(t, cid, tf, n) for cid, n, counts, _ in docs for t, tf in counts.items()])
            for _, _, counts, _ in docs:
                df.update(counts.keys())
            new_len = sum(n for _, n, _, _ in docs)
            self._commit_stats(conn, df, len(docs) - len(gone), new_len - gone_len, [d[0] for d in docs])
        with h.write_lock:
            h.bound_wal()

    def delete(self, index: str, ids: Sequence[int]) -> None:
        h = self._handle(index)
        if h is None or not len(ids):
            return
        with contextlib.suppress(_Gone), h.write_lock, _txn(h.writer(), "IMMEDIATE") as conn:  # _Gone: dropped
            df, gone, gone_len = self._unindex(conn, [int(c) for c in ids])
            if gone:
                self._commit_stats(conn, df, -len(gone), -gone_len, gone)
        with contextlib.suppress(_Gone), h.write_lock:
            h.bound_wal()

    @staticmethod
    def _unindex(conn: sqlite3.Connection, cids: list[int]) -> tuple[Counter[str], list[int], int]:
        """Remove these chunks' rows if present; return the df changes, the ids removed, their total length."""
        rows = conn.execute("SELECT chunk_id, n, terms FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                            (_json(cids),)).fetchall()
        df: Counter[str] = Counter()
        if not rows:
            return df, [], 0
        pairs = []
        for cid, _, terms in rows:
            for t in json.loads(terms):
                pairs.append((t, cid))
                df[t] -= 1
        conn.executemany("DELETE FROM post WHERE term = ? AND chunk_id = ?", pairs)
        gone = [r[0] for r in rows]
        conn.execute("DELETE FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))", (_json(gone),))
        return df, gone, sum(r[1] for r in rows)

    @staticmethod
    def _commit_stats(conn: sqlite3.Connection, df: Counter[str], n_delta: int, len_delta: int,
                      touched: list[int]) -> None:
        changed = [(t, d) for t, d in df.items() if d]
        conn.executemany("INSERT INTO terms VALUES (?, ?) ON CONFLICT (term) DO UPDATE SET df = df + excluded.df",
                         changed)
        conn.executemany("DELETE FROM terms WHERE term = ? AND df <= 0", [(t,) for t, d in changed if d < 0])
        conn.execute("UPDATE meta SET v = v + ? WHERE k = 'n'", (n_delta,))
        conn.execute("UPDATE meta SET v = v + ? WHERE k = 'total'", (len_delta,))
        conn.executemany("INSERT INTO log (chunk_id) VALUES (?)", [(c,) for c in touched])
        conn.execute("DELETE FROM log WHERE seq <= (SELECT MAX(seq) FROM log) - ?", (_LOG_KEEP,))

    def drop(self, index: str) -> None:
        path = self._path(index)
        with self._guard:
            h = self._handles.pop(index, None)
        if h is not None:
            h.close()
        # The -wal and -shm companions, and temporary files of a creation a crash interrupted.
        for p in (path, *self.root.glob(f"{path.name}-*"), *self.root.glob(f".{path.name}.*.tmp*")):
            p.unlink(missing_ok=True)
        _fsync_dir(self.root)

    def close(self) -> None:
        with self._guard:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            h.close()

    # -- reads --------------------------------------------------------------------------------------------

    def search(self, index: str, vector: np.ndarray | None, text: str, k: int, mode: str) -> list[Candidate]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        h = self._handle(index)
        if h is None or k <= 0:
            return []
        try:
            with h.reader() as conn:
                return self._search(h, conn, vector, text, k, mode)
        except _Gone:
            return []

    def _search(self, h: _Handle, conn: sqlite3.Connection, vector: np.ndarray | None, text: str, k: int,
                mode: str) -> list[Candidate]:
        dense: dict[int, float] = {}
        q = None
        if mode != "keyword":
            if vector is None:
                raise ValueError(f"{mode} search needs a query vector")
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
            with h.dense_lock:
                d = self._dense(h, conn, q)
                dense = dict(d.top(q, k))
            if mode == "dense":
                return [(c, _clip(s), None) for c, s in dense.items()]
        terms = set(tokenize(text))  # a set: a repeated query word counts once, as in BM25Index
        kw = _bm25(conn, terms, k, None)
        if mode == "keyword":
            return [(c, None, s) for c, s in kw.items()]
        assert q is not None
        # Hybrid: fill the missing half of every candidate exactly.
        missing_kw = [c for c in dense if c not in kw]
        if missing_kw:
            kw.update(_bm25(conn, terms, len(missing_kw), missing_kw))
        missing_dense = [c for c in kw if c not in dense]
        if missing_dense:
            with h.dense_lock:
                d = self._dense(h, conn, q)
                dense.update(d.scores(q, missing_dense))
            # A chunk committed after our refresh: read its vector from the file (gone since: dropped below).
            late = [c for c in missing_dense if c not in dense]
            if late:
                for cid, vec in conn.execute(
                        "SELECT chunk_id, vec FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                        (_json(late),)):
                    dense[cid] = float(np.frombuffer(vec, dtype=_F32) @ q)
        return [(c, _clip(dense[c]), kw.get(c, 0.0)) for c in dense.keys() | kw.keys() if c in dense]

    @staticmethod
    def _dense(h: _Handle, conn: sqlite3.Connection, q: np.ndarray) -> _Dense:
        """The handle's vectors, loaded on first use and brought up to date (hold ``dense_lock``)."""
        if h.closed:
            raise _Gone
        if h.dense is None:
            h.dense = _Dense(conn.execute("SELECT v FROM meta WHERE k = 'dim'").fetchone()[0])
        if q.shape != (h.dense.dim,):
            raise ValueError(f"query vector has shape {q.shape}, index dim is {h.dense.dim}")
        h.dense.refresh(conn)
        return h.dense

    def count(self, index: str) -> int:
        rows = self._read(index, "SELECT v FROM meta WHERE k = 'n'")
        return int(rows[0][0]) if rows else 0

    def ids(self, index: str) -> np.ndarray:
        rows = self._read(index, "SELECT chunk_id FROM chunks ORDER BY chunk_id") or []
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, index: str, ids: Sequence[int]) -> np.ndarray:
        wanted = [int(c) for c in ids]
        found = dict(self._read(index, "SELECT chunk_id, vec FROM chunks WHERE chunk_id IN "
                                       "(SELECT value FROM json_each(?))", _json(wanted)) or [])
        unknown = [c for c in wanted if c not in found]
        if unknown:
            raise KeyError(f"index {index} has no chunk {unknown[:10]}")
        if not wanted:
            rows = self._read(index, "SELECT v FROM meta WHERE k = 'dim'")
            return np.zeros((0, rows[0][0] if rows else 0), dtype=np.float32)
        return np.vstack([np.frombuffer(found[c], dtype=_F32) for c in wanted]).astype(np.float32, copy=False)

    def _read(self, index: str, sql: str, *args: object) -> list[tuple] | None:
        """Rows of one query, or None if the index does not exist."""
        h = self._handle(index)
        if h is None:
            return None
        try:
            with h.reader() as conn:
                return conn.execute(sql, args).fetchall()
        except _Gone:
            return None


def _bm25(conn: sqlite3.Connection, query_terms: set[str], k: int, only: list[int] | None) -> dict[int, float]:
    """Normalised BM25 (exactly kb.keyword.BM25Index's) of the top ``k`` chunks, or of the ``only`` ones."""
    if not query_terms or k <= 0:
        return {}
    with _txn(conn):  # statistics and postings from one snapshot
        n, total = (r[0] for r in conn.execute("SELECT v FROM meta WHERE k IN ('n', 'total') ORDER BY k"))
        df = dict(conn.execute("SELECT term, df FROM terms WHERE term IN (SELECT value FROM json_each(?))",
                               (_json(list(query_terms)),)))
        if not n or not df:
            return {}
        idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        # Terms the corpus lacks still count in the maximum (see kb.keyword).
        best = sum(v * (_K1 + 1) for v in idf.values())
        best += (len(query_terms) - len(df)) * math.log(1 + (n + 0.5) / 0.5) * (_K1 + 1)
        weights = _json([[t, v * (_K1 + 1)] for t, v in idf.items()])
        sql = _BM25_SQL.format(only=_ONLY_SQL if only is not None else "")
        args = (weights, _K1, _B, total / n, k) + ((_json(only),) if only is not None else ())
        rows = conn.execute(sql, args).fetchall()
    return {cid: min(1.0, s / best) for cid, s in rows}


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
