"""Retrieval evaluation on BEIR-layout sets, through the same ingest pipeline as uploads.

Each corpus document is written as a markdown file (``# title`` then text) into a temporary KB,
every query is searched, chunk hits are mapped back to corpus ids (a document ranks at its best
chunk), and nDCG@10, Recall@10 and MRR@10 are computed against the qrels.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from configs.settings import Settings
from kb.types import KBError

K = 10


@dataclass
class Dataset:
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(path: Path, split: str) -> Dataset:
    path = Path(path)
    qrels_file = path / "qrels" / f"{split}.tsv"
    for f in (path / "corpus.jsonl", path / "queries.jsonl", qrels_file):
        if not f.is_file():
            raise KBError(f"not a BEIR dataset: missing {f}")
    corpus = {}
    with open(path / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus[str(d["_id"])] = (d.get("title") or "", d.get("text") or "")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) >= 3 and int(parts[2]) > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {}
    with open(path / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if str(d["_id"]) in qrels:
                queries[str(d["_id"])] = d["text"]
    return Dataset(corpus, queries, qrels)


def _ndcg(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum((2 ** rel.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:K]))
    ideal = sorted(rel.values(), reverse=True)[:K]
    idcg = sum((2 ** r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def _recall(ranked: list[str], rel: dict[str, int]) -> float:
    return len(set(ranked[:K]) & set(rel)) / len(rel) if rel else 0.0


def _mrr(ranked: list[str], rel: dict[str, int]) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:K]) if d in rel), 0.0)


def evaluate(dataset_dir: Path, settings: Settings, split: str = "test", top_k: int = K,
             modes: list[str] | None = None, limit_queries: int | None = None,
             progress: bool = False) -> dict[str, dict[str, float]]:
    """Index the corpus once, then score each mode. Returns {mode: metrics}."""
    from kb.service import KnowledgeBaseManager

    ds = load_beir(dataset_dir, split)
    qids = sorted(ds.queries)[:limit_queries] if limit_queries else sorted(ds.queries)
    settings.prepare_dirs()
    work = Path(tempfile.mkdtemp(prefix="eval-", dir=settings.tmp_dir))
    # Its own SQLite database always (a team database gets no scratch KB); the index backend is the configured
    # one, so ``KBCHAT_VECTOR_STORE=http://...`` measures Milvus.
    eval_settings = settings.model_copy(update={"data_dir": work / "kbs", "database_url": None})
    manager: KnowledgeBaseManager | None = None
    try:
        src = work / "corpus"
        src.mkdir()
        paths, names = [], []
        for i, (doc_id, (title, text)) in enumerate(ds.corpus.items()):
            p = src / f"{i}.md"
            p.write_text(f"# {title}\n\n{text}\n" if title else f"{text}\n", encoding="utf-8")
            paths.append(p)
            names.append(f"{doc_id}.md")
        manager = KnowledgeBaseManager(eval_settings)
        kb = manager.create("eval", search_mode=settings.search_mode)

        def show(frac: float, msg: str) -> None:
            if progress and (int(frac * 1000) % 50 == 0 or frac >= 1):
                print(f"\r  indexing {frac:6.1%} {msg[:60]:<60}", end="", flush=True)

        t0 = time.perf_counter()
        results = kb.ingest(paths, names, progress=show)
        index_seconds = time.perf_counter() - t0
        if progress:
            print()
        failed = [r for r in results if r.status == "failed"]
        id_of = {f["file_id"]: Path(f["name"]).stem for f in kb.files()}
        out: dict[str, dict[str, float]] = {}
        for mode_spec in modes or [kb.search_mode]:
            # "hybrid:0.4" scores hybrid with alpha 0.4, so one index serves an alpha sweep.
            mode, _, alpha = mode_spec.partition(":")
            if alpha:
                kb.update(hybrid_alpha=float(alpha))
            ndcg, recall, mrr, lat = [], [], [], []
            for qid in qids:
                t = time.perf_counter()
                # Ask for extra chunks: several chunks of one document collapse into one rank.
                hits = kb.search(ds.queries[qid], top_k=max(top_k * 5, 50), threshold=0.0, mode=mode)
                lat.append(time.perf_counter() - t)
                ranked: list[str] = []
                for h in hits:
                    doc = id_of.get(h.file_id)
                    if doc is not None and doc not in ranked:
                        ranked.append(doc)
                ranked = ranked[:top_k]
                rel = ds.qrels[qid]
                ndcg.append(_ndcg(ranked, rel))
                recall.append(_recall(ranked, rel))
                mrr.append(_mrr(ranked, rel))
            out[mode_spec] = {
                "ndcg@10": round(statistics.fmean(ndcg), 4),
                "recall@10": round(statistics.fmean(recall), 4),
                "mrr@10": round(statistics.fmean(mrr), 4),
                "queries": len(qids),
                "index_seconds": round(index_seconds, 1),
                "query_p50_ms": round(statistics.median(lat) * 1000, 1),
                "chunks": kb.info()["chunks"],
                "failed_docs": len(failed),
                "embedding_model": kb.info()["embedding_model"],
            }
        return out
    finally:
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.delete("eval")  # drops its index from a shared engine too
            manager.close()
        shutil.rmtree(work, ignore_errors=True)
