"""Index backend scaling: commit cost, search latency and memory at 1k .. 1M chunks.

    python -m bench.store [--backend local|milvus] [--uri http://host:19530] [--sizes 1000,100000,1000000]
                          [--root DIR --keep [--reuse]] [--json]

Synthetic chunks: L2-normalised random 384-d vectors and 20-40-word texts drawn (Zipf-Mandelbrot, so some
words are common and most rare, as in real text after stop words) from a vocabulary of 15k Chinese words
(jieba's dictionary) and 15k English words (SciFact abstracts). Per size, a child process builds the index
with bulk adds; this process then serves it and measures: the first search (load), RSS, dense / keyword /
hybrid search latency, the commit cost (add 20 chunks, delete 20 chunks, medians of 20), the first dense
search after a commit (the reader catching up), and for ``local`` the raw limit: FAISS ``IndexFlatIP`` over
the same vectors, no ids, no SQLite. Prints a markdown table and writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kb.index import IndexBackend

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "retrieval" / "scifact-train" / "corpus.jsonl"
DIM = 384
BATCH = 2000  # chunks per add while building
K = 50  # candidates per retriever, as kb.index.CANDIDATES


def vocabulary(size: int = 15_000) -> list[str]:
    """Frequent Chinese words (2-4 characters) and English words (4+ letters), shuffled together."""
    import jieba

    zh = []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as f:
        for line in f:
            word, freq, *_ = line.split()
            if 2 <= len(word) <= 4 and int(freq) >= 50:
                zh.append((int(freq), word))
    zh_words = [w for _, w in sorted(zh, reverse=True)[:size]]
    en: Counter[str] = Counter()
    with open(SCIFACT, encoding="utf-8") as f:
        for line in f:
            en.update(w for w in json.loads(line)["text"].lower().split() if len(w) >= 4 and w.isalpha())
    words = zh_words + [w for w, _ in en.most_common(size)]
    np.random.default_rng(0).shuffle(words)
    return words


class Corpus:
    """Chunk ``i`` is always the same vector and text, so builders and the measurer agree without sharing."""

    def __init__(self) -> None:
        self.words = np.array(vocabulary())
        self.zh = np.array([w[0] >= "\u3400" for w in self.words])
        p = 1.0 / (np.arange(len(self.words)) + 50.0)  # Zipf-Mandelbrot: the top word is in ~10% of chunks
        self.cdf = np.cumsum(p / p.sum())

    def batch(self, start: int, n: int) -> tuple[list[int], np.ndarray, list[str]]:
        rng = np.random.default_rng(start)
        vecs = rng.standard_normal((n, DIM), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        lengths = rng.integers(20, 41, n)
        picks = np.searchsorted(self.cdf, rng.random(int(lengths.sum())))
        texts, at = [], 0
        for m in lengths:
            words, zh = self.words[picks[at:at + m]], self.zh[picks[at:at + m]]
            # Chinese is written without spaces: consecutive Chinese words make one run for jieba to segment.
            texts.append(words[0] + "".join(w if zh[i] and zh[i + 1] else " " + w for i, w in enumerate(words[1:])))
            at += m
        return list(range(start, start + n)), vecs, texts


def backend(kind: str, uri: str | None, root: Path) -> IndexBackend:
    if kind == "local":
        from kb.index.local import LocalIndex

        return LocalIndex(root)
    from kb.index.milvus import MilvusIndex

    return MilvusIndex(uri or "")


def build(kind: str, uri: str | None, root: Path, index: str, start: int, stop: int, step: int) -> int:
    """Add chunks start, start + step*BATCH, ... (one of several builder processes); returns chunks added."""
    ix, corpus, added, t0 = backend(kind, uri, root), Corpus(), 0, time.perf_counter()
    for s in range(start, stop, step * BATCH):
        ids, vecs, texts = corpus.batch(s, min(BATCH, stop - s))
        ix.add(index, DIM, ids, vecs, texts)
        added += len(ids)
        if added % 50_000 < BATCH:  # progress on stderr: a 1M build takes a while
            print(f"builder {start // BATCH}: {added} chunks, {added / (time.perf_counter() - t0):.0f}/s",
                  file=sys.stderr, flush=True)
    ix.close()
    return added


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 2)


def measure(kind: str, uri: str | None, root: Path, size: int, procs: int, reuse: bool = False) -> dict:
    index = f"bench_{size}"
    ix = backend(kind, uri, root)
    build_s = None
    if not (reuse and ix.count(index) == size):  # measuring leaves an index as it was built
        ix.drop(index)
        t = time.perf_counter()
        # Building is CPU-bound in tokenisation, which each add does before its write transaction, so builder
        # processes overlap it with each other's commits (and exercise several writers on one index).
        with mp.get_context("spawn").Pool(procs) as pool:
            added = sum(pool.starmap(build, [(kind, uri, root, index, p * BATCH, size, procs)
                                             for p in range(procs)]))
        build_s = time.perf_counter() - t
        assert added == size, added
    assert ix.count(index) == size, ix.count(index)
    corpus = Corpus()
    rng = np.random.default_rng(1)
    qv = rng.standard_normal((100, DIM), dtype=np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    # Query text: 4 words of a random chunk, so a query shares terms with at least one chunk.
    qt = [" ".join(corpus.batch(int(c), 1)[2][0].split()[:4]) for c in rng.integers(0, size, 100)]

    rss0 = rss_mib()
    t = time.perf_counter()
    ix.search(index, qv[0], qt[0], K, "dense")
    load_s = time.perf_counter() - t
    row: dict = {"backend": kind, "chunks": size, "load_s": round(load_s, 2),
                 "rss_mib": round(rss_mib()), "rss_delta_mib": round(rss_mib() - rss0)}
    if build_s is not None:
        row.update(build_s=round(build_s, 1), build_per_s=round(size / build_s))
    if kind == "local":
        row["disk_mib"] = round(sum(p.stat().st_size for p in root.glob(f"{index}.sqlite*")) / 2**20)
    for mode in ("dense", "keyword", "hybrid"):
        lat = []
        for v, text in zip(qv, qt, strict=True):
            t = time.perf_counter()
            ix.search(index, v, text, K, mode)
            lat.append(time.perf_counter() - t)
        row[f"{mode}_p50_ms"], row[f"{mode}_p99_ms"] = pct(lat, 50), pct(lat, 99)

    adds, dels, catchup = [], [], []
    for r in range(20):
        ids, vecs, texts = corpus.batch(size + r * 20, 20)
        t = time.perf_counter()
        ix.add(index, DIM, ids, vecs, texts)
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        ix.search(index, qv[r], qt[r], K, "dense")  # picks up the 20 new vectors
        catchup.append(time.perf_counter() - t)
    for r in range(20):
        t = time.perf_counter()
        ix.delete(index, list(range(size + r * 20, size + r * 20 + 20)))
        dels.append(time.perf_counter() - t)
    row["add20_ms"] = round(statistics.median(adds) * 1000, 2)
    row["delete20_ms"] = round(statistics.median(dels) * 1000, 2)
    row["search_after_add_ms"] = round(statistics.median(catchup) * 1000, 2)

    if kind == "local":  # raw limit: the exhaustive scan alone, on the same vectors
        import faiss

        ids = ix.ids(index)
        flat = faiss.IndexFlatIP(DIM)
        for s in range(0, len(ids), 100_000):
            flat.add(ix.vectors(index, ids[s:s + 100_000]))
        lat = []
        for v in qv:
            t = time.perf_counter()
            flat.search(v.reshape(1, -1), K)
            lat.append(time.perf_counter() - t)
        row["faiss_flat_p50_ms"] = pct(lat, 50)
        row["dense_vs_raw"] = round(row["dense_p50_ms"] / row["faiss_flat_p50_ms"], 2)
        del flat
    ix.close()
    return row


def commit_ratio(kind: str, uri: str | None, root: Path, sizes: list[int], rounds: int = 30) -> dict[str, float]:
    """Commit cost of every size measured side by side: each round adds then deletes one 20-chunk file in every
    index, in alternating order, so machine load (this VM's neighbours, other jobs) falls on all sizes alike.
    Returns the median add and delete ms per size and the largest/smallest ratio."""
    ix, corpus = backend(kind, uri, root), Corpus()
    for size in sizes:  # open each index (a reader loads its vectors) before timing
        ix.search(f"bench_{size}", corpus.batch(0, 1)[1][0], "", K, "dense")
    adds: dict[int, list[float]] = {n: [] for n in sizes}
    dels: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(rounds):
        for size in sizes if r % 2 == 0 else sizes[::-1]:
            ids, vecs, texts = corpus.batch(10 * size + r * 20, 20)
            t = time.perf_counter()
            ix.add(f"bench_{size}", DIM, ids, vecs, texts)
            adds[size].append(time.perf_counter() - t)
            t = time.perf_counter()
            ix.delete(f"bench_{size}", ids)
            dels[size].append(time.perf_counter() - t)
    ix.close()
    out: dict[str, float] = {}
    for size in sizes:
        out[f"add20_ms@{size}"] = round(statistics.median(adds[size]) * 1000, 2)
        out[f"delete20_ms@{size}"] = round(statistics.median(dels[size]) * 1000, 2)
    lo, hi = min(sizes), max(sizes)
    out["add_ratio"] = round(out[f"add20_ms@{hi}"] / out[f"add20_ms@{lo}"], 2)
    out["delete_ratio"] = round(out[f"delete20_ms@{hi}"] / out[f"delete20_ms@{lo}"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["local", "milvus"], default="local")
    ap.add_argument("--uri", help="Milvus URI (--backend milvus), e.g. http://localhost:19530")
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--procs", type=int, default=2, help="builder processes")
    ap.add_argument("--root", type=Path, help="local: directory for the index files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--reuse", action="store_true", help="measure indexes kept by --keep instead of rebuilding")
    ap.add_argument("--json", action="store_true", help="print one JSON object per size instead of a table")
    args = ap.parse_args()
    if args.backend == "milvus" and not args.uri:
        ap.error("--backend milvus needs --uri")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_store_"))
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    ratio: dict[str, float] = {}
    try:
        for size in sizes:
            rows.append(measure(args.backend, args.uri, root, size, args.procs, args.reuse))
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
        if len(sizes) > 1:
            ratio = commit_ratio(args.backend, args.uri, root, sizes)
            if args.json:
                print(json.dumps(ratio), flush=True)
        if not args.keep:
            ix = backend(args.backend, args.uri, root)
            for size in sizes:
                ix.drop(f"bench_{size}")
            ix.close()
    finally:
        if args.root is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load": os.getloadavg()}
    (out / "store.json").write_text(json.dumps({"meta": meta, "rows": rows, "commit_ratio": ratio}, indent=1))
    if args.json:
        return
    cols = ["chunks", "build_s", "build_per_s", "disk_mib", "load_s", "rss_mib", "add20_ms", "delete20_ms",
            "search_after_add_ms", "dense_p50_ms", "dense_p99_ms", "keyword_p50_ms", "keyword_p99_ms",
            "hybrid_p50_ms", "hybrid_p99_ms", "faiss_flat_p50_ms", "dense_vs_raw"]
    cols = [c for c in cols if any(c in r for r in rows)]
    print(f"\nbackend={args.backend}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if ratio:
        print("\ncommit cost side by side (median of 30 rounds): " + ", ".join(f"{k} {v}" for k, v in ratio.items()))


if __name__ == "__main__":
    main()
