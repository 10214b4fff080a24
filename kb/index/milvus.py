"""Milvus index backend (Milvus 2.5+ through ``pymilvus.MilvusClient``; tested against milvus-lite's server).

Layout: one collection per vector dimension (``kbchat_d384``) holds every index of that dimension; the index
name is the VARCHAR **partition key** ``idx``, so Milvus routes each index to its own partition bucket and an
``idx == "..."`` filter prunes to it. Fields:

- ``pk``     VARCHAR primary key ``<index>:<chunk id>``. Chunk ids are unique within one database only, and
             deployments with their own databases (or ``python -m kb eval``'s scratch one) may share a Milvus:
             keyed by the chunk id alone, an upsert of one would overwrite another's row.
- ``id``     INT64, the chunk id.
- ``idx``    VARCHAR partition key (index name, e.g. ``kb3_g2``).
- ``vec``    FLOAT_VECTOR, FLAT index, metric IP (vectors are L2-normalised, so IP = cosine; FLAT is exact,
             like the local backend).
- ``text``   VARCHAR with the jieba analyzer; Milvus's built-in BM25 Function turns it into ``sparse``.
- ``sparse`` SPARSE_FLOAT_VECTOR (BM25 Function output), SPARSE_INVERTED_INDEX / BM25.
- ``terms``, ``tfs``, ``ntok``: the chunk's ``kb.keyword.tokenize`` terms, their frequencies and its length.

Keyword scores. The server's BM25 finds the keyword *candidates*, but their scores are recomputed here with
exactly the local formula (``kb.keyword.BM25Index``: same tokeniser, k1, b, idf, per-index statistics and
normaliser), from ``terms``/``tfs``/``ntok`` and per-index statistics read from the server: N = count of the
index, df(t) = count of the index's rows with ``array_contains(terms, t)``, avgdl = mean ``ntok`` of the index
(see ``_avg_len``). Why not use the server's score and only divide it by a normaliser computed here:
- which N/df/avgdl the server uses is an engine detail: Milvus keeps BM25 statistics per collection shard, not
  per partition-key value (so every index sharing the collection pollutes the idf); milvus-lite per segment
  (including deleted rows) for flushed data and, for unflushed rows, over the rows that pass the search filter
  (so a search "filtered to these ids" — how hybrid fills missing halves — scores differently from the
  unfiltered one: 0.55 vs 0.29 for the same chunk in a probe). No outside normaliser matches all of that;
- the normaliser needs the analyzer's query terms and their df: ``run_analyzer`` exists only from Milvus 2.5.11
  and not in milvus-lite, and milvus-lite's ``text_match`` ignores the field's analyzer (it splits on ``\\w+``,
  so a Chinese word never matches); ``array_contains`` over our own terms is exact everywhere;
- the local backend folds Traditional to Simplified, stems English and drops stop words; jieba does not.
So a keyword score means the same on both backends; only the candidate list can differ (server jieba vs local
tokeniser), and we over-fetch server candidates to make that rare.

Hybrid: the two retrievers run as two searches (not ``hybrid_search``: a WeightedRanker returns only the fused
score, and we need both halves); the union is scored exactly: dense for keyword-only candidates from their
stored vectors, keyword for dense-only candidates from their stored terms.

Visibility: collections use Strong consistency, so a row upserted by any client is seen by the next search or
query of every client (milvus-lite applies writes synchronously; Milvus waits for the write timestamp).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kb.index import MODES, Candidate, check_index_name
from kb.keyword import _B, _K1, _STOP, term_counts, tokenize

log = logging.getLogger(__name__)

_PREFIX = "kbchat_d"
_TEXT_BYTES = 65535  # Milvus VARCHAR limit; only the server's candidate search sees this copy
_TERM_BYTES = 256  # per-term limit of the terms array (longer "words" are URLs and the like)
_MAX_TERMS = 4096  # Milvus ARRAY max_capacity limit
_ROWS_PER_UPSERT = 256  # keeps a gRPC message far below its 64 MB limit even with 64 KB texts
_IDS_PER_EXPR = 1000  # ids per "id in [...]" filter
_PAGE = 10000  # rows per iterator page (Milvus caps limit + offset at 16384)
_OVERFETCH = 2  # server BM25 candidates per wanted keyword candidate (its tokeniser differs from ours)
_AVGDL_TTL = 60.0  # seconds a big index's cached mean chunk length may be reused
_PUNCT = "，。、；：？！“”‘’（）《》【】…—·,.;:?!\"'()[]{}<>-_/\\|@#$%^&*+=~`"

# The server-side analyzer only chooses candidates; lowercase + the local stop words + punctuation bring its
# terms closer to kb.keyword.tokenize (jieba emits punctuation as tokens). milvus-lite lowercases in jieba and
# accepts but ignores the lowercase filter; Milvus needs it.
_ANALYZER = {
    "tokenizer": "jieba",
    "filter": ["lowercase", {"type": "stop", "stop_words": sorted(_STOP | set(_PUNCT))}],
}


def _quote(s: str) -> str:
    """A Milvus filter string literal (filter templating is not in milvus-lite, so escape by hand)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _truncate_utf8(s: str, limit: int) -> str:
    b = s.encode("utf-8")
    return s if len(b) <= limit else b[:limit].decode("utf-8", errors="ignore")


def _batches(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def connect(uri: str, token: str | None = None, timeout: float | None = None):
    """A MilvusClient on its own gRPC channel that pings only while calls are in flight, and rarely.

    pymilvus shares one channel per address among clients (the first client's options win) and pings every
    10 s even when idle; gRPC servers that keep the default ping policy (milvus-lite does) answer that with
    GOAWAY "too many pings" and the next call fails UNAVAILABLE. A dedicated channel keeps our options.
    """
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, token=token or "", timeout=timeout, dedicated=True, grpc_options={
        "grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False})


class MilvusIndex:
    def __init__(self, uri: str, token: str | None = None) -> None:
        self._client = connect(uri, token)
        self._lock = threading.Lock()
        self._ready: set[str] = set()  # collections known to exist (created or seen)
        self._avgdl: dict[tuple[str, str], tuple[int, float, float]] = {}  # -> (count, avgdl, when)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="milvus-df")

    # -- collections ----------------------------------------------------------------------------------------

    def _collections(self) -> list[str]:
        """Every kbchat collection on the server (other processes may have created some since)."""
        names = sorted(n for n in self._client.list_collections() if n.startswith(_PREFIX))
        with self._lock:
            self._ready.update(names)
        return names

    def _ensure(self, dim: int) -> str:
        name = f"{_PREFIX}{int(dim)}"
        with self._lock:
            if name in self._ready:
                return name
        if not self._client.has_collection(name):
            try:
                self._create(name, dim)
            except Exception:
                if not self._client.has_collection(name):  # lost a creation race to another process: fine
                    raise
        with self._lock:
            self._ready.add(name)
        return name

    def _create(self, name: str, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self._client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, max_length=96, is_primary=True)
        schema.add_field("id", DataType.INT64)
        schema.add_field("idx", DataType.VARCHAR, max_length=64, is_partition_key=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_BYTES, enable_analyzer=True,
                         analyzer_params=_ANALYZER)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("terms", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=_MAX_TERMS,
                         max_length=_TERM_BYTES)
        schema.add_field("tfs", DataType.ARRAY, element_type=DataType.INT32, max_capacity=_MAX_TERMS)
        schema.add_field("ntok", DataType.INT32)
        schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        params = c.prepare_index_params()
        params.add_index("vec", index_type="FLAT", metric_type="IP")
        params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                         params={"bm25_k1": _K1, "bm25_b": _B})
        params.add_index("idx", index_type="INVERTED")
        c.create_collection(name, schema=schema, index_params=params, consistency_level="Strong", num_shards=1)
        # Milvus indexes ARRAY fields (fast df counts: array_contains(terms, t)); milvus-lite refuses ("ARRAY does
        # not support scalar index") and scans instead, which is correct, only slower.
        terms_index = c.prepare_index_params()
        terms_index.add_index("terms", index_type="INVERTED")
        try:
            c.create_index(name, terms_index)
        except Exception as e:
            log.info("no scalar index on %s.terms (%s); df counts will scan", name, e)

    def _count(self, collection: str, index: str, expr: str = "") -> int:
        flt = f"idx == {_quote(index)}" + (f" and {expr}" if expr else "")
        res = self._client.query(collection, filter=flt, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    # -- writes ---------------------------------------------------------------------------------------------

    def add(self, index: str, dim: int, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str],
            terms: Sequence[Counter[str]] | None = None) -> None:
        check_index_name(index)
        vecs = np.asarray(vectors, dtype=np.float32).reshape(len(ids), int(dim))
        if len(texts) != len(ids) or (terms is not None and len(terms) != len(ids)):
            raise ValueError("ids, vectors and texts differ in length")
        if not len(ids):
            return
        name = self._ensure(dim)
        rows = []
        for i, (cid, vec, text) in enumerate(zip(ids, vecs, texts, strict=True)):
            counts = terms[i] if terms is not None else term_counts(text)
            kept = [(t, n) for t, n in counts.most_common(_MAX_TERMS * 2) if len(t.encode("utf-8")) <= _TERM_BYTES]
            kept = kept[:_MAX_TERMS]  # beyond 4096 distinct terms the rarest are not searchable (very long chunks)
            rows.append({"pk": f"{index}:{int(cid)}", "id": int(cid), "idx": index, "vec": vec.tolist(),
                         "text": _truncate_utf8(text, _TEXT_BYTES),
                         "terms": [t for t, _ in kept], "tfs": [n for _, n in kept], "ntok": sum(counts.values())})
        for batch in _batches(rows, _ROWS_PER_UPSERT):
            self._client.upsert(name, list(batch))
        self._forget(index)

    def delete(self, index: str, ids: Sequence[int]) -> None:
        check_index_name(index)
        wanted = [int(c) for c in ids]
        if not wanted:
            return
        for name in self._collections():
            for batch in _batches(wanted, _IDS_PER_EXPR):
                # The idx condition keeps a (buggy) caller from deleting another index's chunk with the same id.
                self._client.delete(name, filter=f"idx == {_quote(index)} and id in {list(batch)}")
        self._forget(index)

    def drop(self, index: str) -> None:
        check_index_name(index)
        for name in self._collections():
            self._client.delete(name, filter=f"idx == {_quote(index)}")
        self._forget(index)

    # -- reads ----------------------------------------------------------------------------------------------

    def count(self, index: str) -> int:
        check_index_name(index)
        return sum(self._count(c, index) for c in self._collections())

    def _iterate(self, collection: str, index: str, fields: list[str]) -> Iterable[list[dict]]:
        """All rows of an index in pages (an iterator: offset + limit is capped at 16384 by Milvus)."""
        it = self._client.query_iterator(collection, batch_size=_PAGE, filter=f"idx == {_quote(index)}",
                                         output_fields=fields)
        try:
            while page := it.next():
                yield page
        finally:
            it.close()

    def ids(self, index: str) -> np.ndarray:
        check_index_name(index)
        out = [np.fromiter((r["id"] for r in page), dtype=np.int64)
               for c in self._collections() for page in self._iterate(c, index, ["id"])]
        return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)

    def _rows(self, collection: str, index: str, ids: Sequence[int], fields: list[str]) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for batch in _batches([int(c) for c in ids], _IDS_PER_EXPR):
            res = self._client.query(collection, filter=f"idx == {_quote(index)} and id in {list(batch)}",
                                     output_fields=["id", *fields], limit=len(batch))
            found.update((int(r["id"]), r) for r in res)
        return found

    def vectors(self, index: str, ids: Sequence[int]) -> np.ndarray:
        check_index_name(index)
        wanted = [int(c) for c in ids]
        found: dict[int, dict] = {}
        dim = 0
        for name in self._collections():
            rows = self._rows(name, index, wanted, ["vec"]) if wanted else {}
            found.update(rows)
            if rows or (not dim and self._count(name, index)):
                dim = int(name.removeprefix(_PREFIX))
        unknown = [c for c in wanted if c not in found]
        if unknown:
            raise KeyError(f"index {index} has no chunk {unknown[:10]}")
        if not wanted:
            return np.zeros((0, dim), dtype=np.float32)
        return np.asarray([found[c]["vec"] for c in wanted], dtype=np.float32)

    # -- search ---------------------------------------------------------------------------------------------

    def search(self, index: str, vector: np.ndarray | None, text: str, k: int, mode: str) -> list[Candidate]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        check_index_name(index)
        q = None
        if mode != "keyword":
            if vector is None:
                raise ValueError(f"{mode} search needs a query vector")
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if k <= 0:
            return []
        collections = self._collections()
        if q is not None:
            name = f"{_PREFIX}{q.shape[0]}"
            if name not in collections:
                if any(self._count(c, index) for c in collections):  # exists with another dimension: a bug
                    raise ValueError(f"query vector has dim {q.shape[0]}, index {index} has another")
                return []
            n = self._count(name, index) if mode == "hybrid" else 1  # dense mode needs no statistics
        else:
            counts = {c: self._count(c, index) for c in collections}
            name, n = max(counts.items(), key=lambda kv: kv[1], default=("", 0))
        if not n:
            return []
        flt = f"idx == {_quote(index)}"

        dense: dict[int, float] = {}
        if q is not None:
            res = self._client.search(name, data=[q.tolist()], anns_field="vec", limit=min(k, 16384), filter=flt,
                                      output_fields=["id"], search_params={"metric_type": "IP"})
            dense = {int(h["id"]): float(h["distance"]) for h in res[0]}  # IP: larger is closer
            if mode == "dense":
                return [(c, _clip(s), None) for c, s in dense.items()]

        kw: dict[int, float] = {}
        query_terms = set(tokenize(text))
        if query_terms:
            # Server BM25 (its own scores are negative in milvus-lite and differently normalised: only the ids
            # are used), over-fetched, then scored exactly and cut to k.
            res = self._client.search(name, data=[text], anns_field="sparse", limit=min(16384, k * _OVERFETCH),
                                      filter=flt, output_fields=["id"], search_params={"metric_type": "BM25"})
            server_ids = [int(h["id"]) for h in res[0]]
            seen = set(server_ids)
            extra = [c for c in dense if c not in seen]
            scored = self._keyword_scores(name, index, n, query_terms, server_ids + extra)
            # Dense-only candidates were scored in the same pass; keep them for hybrid, but rank only the
            # server's candidates for the keyword list.
            top = sorted(((c, scored.get(c, 0.0)) for c in server_ids), key=lambda kv: (-kv[1], kv[0]))[:k]
            kw = {c: s for c, s in top if s > 0}
            for c in dense:
                kw.setdefault(c, scored.get(c, 0.0))
        if mode == "keyword":
            return [(c, None, s) for c, s in kw.items() if s > 0]

        assert q is not None
        missing = [c for c in kw if c not in dense]
        if missing:
            rows = self._rows(name, index, missing, ["vec"])
            for c in missing:
                if c in rows:  # a row deleted between the two searches is simply dropped
                    dense[c] = float(np.asarray(rows[c]["vec"], dtype=np.float32) @ q)
        return [(c, _clip(d), kw.get(c, 0.0)) for c, d in dense.items()]

    def _keyword_scores(self, name: str, index: str, n: int, query_terms: set[str], ids: list[int]
                        ) -> dict[int, float]:
        """Normalised BM25 of ``ids``, computed as ``kb.keyword.BM25Index._score`` does, with the index's own
        statistics (``n`` rows)."""
        if not ids:
            return {}
        # One count per query term: independent round trips, so run them side by side.
        terms = sorted(query_terms)
        df_jobs = [self._pool.submit(self._count, name, index, f"array_contains(terms, {_quote(t)})") for t in terms]
        rows = self._rows(name, index, ids, ["terms", "tfs", "ntok"])
        avgdl = self._avg_len(name, index, n)
        df = {t: job.result() for t, job in zip(terms, df_jobs, strict=True)}
        idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        # Best possible: every query term with saturated frequency; unknown terms (df 0) count too.
        best = sum(idf.values()) * (_K1 + 1)
        out: dict[int, float] = {}
        for cid, r in rows.items():
            norm = _K1 * (1 - _B + _B * r["ntok"] / avgdl)
            s = 0.0
            for t, tf in zip(r["terms"], r["tfs"], strict=True):
                if t in query_terms:
                    s += idf[t] * tf * (_K1 + 1) / (tf + norm)
            out[cid] = min(1.0, s / best)
        return out

    def _forget(self, index: str) -> None:
        with self._lock:
            for key in [k for k in self._avgdl if k[1] == index]:
                del self._avgdl[key]

    def _avg_len(self, name: str, index: str, n: int) -> float:
        """Mean chunk length (``ntok``) of the index. Milvus 2.5 has no sum(), so this reads every row's length
        (seconds on milvus-lite even for 1k rows). The value is reused while the row count is unchanged, for at
        most ``_AVGDL_TTL`` s, and forgotten when this client writes the index: another client's write that
        keeps the count moves the mean very little, and the TTL bounds that staleness."""
        key = (name, index)
        with self._lock:
            hit = self._avgdl.get(key)
        if hit is not None and hit[0] == n and time.monotonic() - hit[2] < _AVGDL_TTL:
            return hit[1]
        total = rows = 0
        for page in self._iterate(name, index, ["ntok"]):
            total += sum(int(r["ntok"]) for r in page)
            rows += len(page)
        avg = total / rows if rows and total else 1.0
        with self._lock:
            self._avgdl[key] = (rows, avg, time.monotonic())
        return avg

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
