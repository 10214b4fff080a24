"""Splitter bake-off: our ``kb.splitter`` against LangChain's ``RecursiveCharacterTextSplitter``.

    python -m bench.splitters [--model use-multilingual] [--datasets cmrc2018-trial:test scifact-train:train]
                              [--max-docs 1500 --max-queries 400]   # a seeded sample of a big set

Both splitters run inside the real ingest pipeline (``kb.evaluate``: loader -> splitter -> embedder -> index),
so only the cut points differ. LangChain's splitter gets Chinese separators (kept at the end of their piece, so
a sentence keeps its full stop), the embedder's token count as its length function, and a chunk size and
overlap in tokens equal to ours (400 / 80 characters) converted at the corpus's measured tokens-per-character
ratio: both produce chunks of about the same mean length, and the comparison is about where they cut.

Prints a markdown table (paste into BENCHMARKS.md) and writes bench/results/splitters.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import kb.service
from configs.settings import Settings, load_settings
from kb.embeddings import create_embedder
from kb.evaluate import evaluate, load_beir
from kb.splitter import chunk_documents, split_text
from kb.types import Chunk, Document

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "retrieval"
# The separators the comparison was specified with, plus the English sentence end (". "), without which
# English text falls straight from lines to single words.
LC_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "，", " ", ""]
Length = Callable[[str], int]


def token_length(model: str) -> Length:
    """The embedder's token count without the two special tokens it adds (<s>, </s>): LangChain sums the
    lengths of the pieces it merges, and counting those per word would triple a chunk's apparent size."""
    emb = create_embedder(model)
    special = emb.count_tokens("a") - 1

    @functools.lru_cache(maxsize=2_000_000)  # words and separators repeat: the tokeniser is pure Python
    def length(text: str) -> int:
        return max(emb.count_tokens(text) - special, 0) if text else 0

    return length


def tokens_per_char(texts: list[str], size: int, overlap: int, length: Length) -> float:
    """Mean tokens per character of our chunks of a sample of the corpus."""
    chunks = [c for t in texts for c in split_text(t, size, overlap)]
    return sum(length(c) for c in chunks) / max(sum(len(c) for c in chunks), 1)


def lc_sizes(size: int, overlap: int, ratio: float, max_tokens: int | None) -> tuple[int, int]:
    """Our chunk size and overlap in tokens, capped like ours: our chunks also stay 16 tokens under the
    embedder's input limit (kb.splitter._cap_tokens), so no chunk is cut short by the model."""
    tokens = round(size * ratio)
    if max_tokens:
        tokens = min(tokens, max_tokens - 16)
    return tokens, min(round(overlap * ratio), tokens // 2)


def langchain_chunker(length: Length, ratio: float) -> Callable[..., list[Chunk]]:
    """A drop-in for ``kb.splitter.chunk_documents`` cutting with LangChain's splitter."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    @functools.lru_cache(maxsize=8)
    def splitter(size: int, overlap: int, max_tokens: int | None) -> RecursiveCharacterTextSplitter:
        tokens, overlap_tokens = lc_sizes(size, overlap, ratio, max_tokens)
        return RecursiveCharacterTextSplitter(
            separators=LC_SEPARATORS, keep_separator="end", chunk_size=tokens, chunk_overlap=overlap_tokens,
            length_function=length)

    def chunk(docs: list[Document], *, file_id: str, size: int, overlap: int, max_tokens: int | None = None,
              fits_tokens: Callable[[str, int], bool] | None = None, first_id: int = 0) -> list[Chunk]:
        out: list[Chunk] = []
        for doc in docs:
            for text in splitter(size, overlap, max_tokens).split_text(doc.text):
                out.append(Chunk(id=first_id + len(out), file_id=file_id, text=text, page=doc.page,
                                 heading=doc.heading, ordinal=len(out)))
        return out

    return chunk


@contextmanager
def splitting_with(fn: Callable[..., list[Chunk]], stats: dict[str, float]) -> Iterator[None]:
    """Make the ingest pipeline cut with ``fn``, timing it; fails loudly if the pipeline never called it."""
    def timed(*args: Any, **kwargs: Any) -> list[Chunk]:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stats["split_seconds"] += time.perf_counter() - t
            stats["calls"] += 1

    with mock.patch.object(kb.service, "chunk_documents", timed):
        yield
    if not stats["calls"]:
        raise RuntimeError("kb.service no longer calls chunk_documents: the splitter hook missed the pipeline")


def subset(dataset: str, split: str, max_docs: int, max_queries: int, dest: Path) -> Path:
    """A seeded sample in BEIR layout: ``max_queries`` queries, every document relevant to one of them, then
    random other documents up to ``max_docs`` (SciFact in full takes over an hour per splitter on a busy
    machine). Both splitters see the same sample."""
    ds = load_beir(DATA / dataset, split)
    rng = random.Random(0)
    qids = sorted(rng.sample(sorted(ds.queries), min(max_queries, len(ds.queries))))
    keep = {d for q in qids for d in ds.qrels[q] if d in ds.corpus}
    others = sorted(set(ds.corpus) - keep)
    keep |= set(rng.sample(others, max(0, min(len(others), max_docs - len(keep)))))
    (dest / "qrels").mkdir(parents=True)
    with open(dest / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id in sorted(keep):
            title, text = ds.corpus[doc_id]
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with open(dest / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": q, "text": ds.queries[q]}, ensure_ascii=False) + "\n" for q in qids)
    with open(dest / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{r}\n" for q in qids for d, r in ds.qrels[q].items())
    return dest


OURS, LANGCHAIN = "kb.splitter (ours)", "langchain RecursiveCharacterTextSplitter"


def run(path: Path, split: str, settings: Settings, modes: list[str], which: list[str]) -> list[dict[str, Any]]:
    dataset = path.name
    length = token_length(settings.embedding_model)
    ds = load_beir(path, split)
    sample = random.Random(0).sample(sorted(ds.corpus), min(300, len(ds.corpus)))
    texts = [f"# {ds.corpus[i][0]}\n\n{ds.corpus[i][1]}" for i in sample]
    ratio = tokens_per_char(texts, settings.chunk_size, settings.chunk_overlap, length)
    lc_tokens, lc_overlap = lc_sizes(settings.chunk_size, settings.chunk_overlap, ratio,
                                     create_embedder(settings.embedding_model).max_tokens)
    rows = []
    splitters = {"ours": (OURS, chunk_documents), "langchain": (LANGCHAIN, langchain_chunker(length, ratio))}
    for name, fn in (splitters[w] for w in which):
        stats = {"split_seconds": 0.0, "calls": 0.0}
        t = time.perf_counter()
        with splitting_with(fn, stats):
            res = evaluate(path, settings, split=split, modes=modes)
        total = time.perf_counter() - t
        for mode, m in res.items():
            rows.append({"dataset": dataset, "docs": len(ds.corpus), "splitter": name, "mode": mode, **m,
                         "split_seconds": round(stats["split_seconds"], 1), "total_seconds": round(total, 1),
                         "tokens_per_char": round(ratio, 4),
                         "lc_chunk_tokens": lc_tokens, "lc_overlap_tokens": lc_overlap})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="use-multilingual")
    ap.add_argument("--datasets", nargs="+", default=["cmrc2018-trial:test", "scifact-train:train"])
    ap.add_argument("--modes", default="dense,keyword,hybrid")
    ap.add_argument("--splitters", default="ours,langchain")
    ap.add_argument("--max-docs", type=int, help="score on a seeded sample: this many documents ...")
    ap.add_argument("--max-queries", type=int, default=400, help="... and this many queries (with --max-docs)")
    args = ap.parse_args()
    out = ROOT / "bench" / "results" / "splitters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-splitters-") as tmp:
        settings = load_settings(data_dir=Path(tmp) / "data", embedding_model=args.model)
        for spec in args.datasets:
            name, split = spec.split(":")
            path = subset(name, split, args.max_docs, args.max_queries, Path(tmp) / name) if args.max_docs \
                else DATA / name
            new = run(path, split, settings, args.modes.split(","), args.splitters.split(","))
            # Other datasets' and splitters' rows stay in the file: each can be (re)measured on its own.
            done = {(r["dataset"], r["splitter"]) for r in new}
            rows = json.loads(out.read_text())["rows"] if out.exists() else []
            rows = [r for r in rows if (r["dataset"], r["splitter"]) not in done] + new
            meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}",
                    "model": args.model, "separators": LC_SEPARATORS}
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, ensure_ascii=False))
    print("\n| dataset | docs | splitter | mode | nDCG@10 | Recall@10 | MRR@10 | chunks | split s | index s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r.get('docs', '')} | {r['splitter']} | {r['mode']} | {r['ndcg@10']:.4f} | "
              f"{r['recall@10']:.4f} | {r['mrr@10']:.4f} | {r['chunks']:,} | {r['split_seconds']} | "
              f"{r['index_seconds']} |")


if __name__ == "__main__":
    main()
