"""Ingestion speed on real documents from ../shared/data/documents, against the embedder's own speed.

    python -m bench.ingest [--embedding-model MODEL] [--folders md_kb_zh pdf_zh_text] [--repeats 3]
    python -m bench.ingest --retrieval cmrc2018-trial     # a retrieval set's passages, one markdown file each

Indexes the folders into a temporary KB through the whole pipeline (loader processes, splitter, embedder,
index, database), records every batch of texts the embedder was given, then replays exactly those calls on
the bare embedder in the same run. ``ratio`` = pipeline chunks/s / raw embedder chunks/s: 1.0 means parsing,
splitting and storing cost nothing beside embedding. Also printed: the time before the first embedding call (the
first file's parse, which nothing can overlap) and the ratio from that call on, and the CPU-s the pipeline spent
beside the embedder's own (in the app and in the loader processes) with the ratio that much work allows on this
machine's cores, however well it overlaps. ``--threads 1`` leaves the
embedder one core and the parsers the other. Each repeat indexes the files into a new KB and replays its calls
twice right after (the faster replay counts); the median ratio over the repeats is the result (on a shared VM
single runs of the same code differ by 0.15).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from configs.settings import load_settings
from kb.embeddings import Embedder
from kb.service import KnowledgeBaseManager, usable_cores

DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "documents"
RETRIEVAL = DOCS.parent / "retrieval"


def passages_as_files(name: str, out: Path) -> list[Path]:
    """A retrieval set's passages as markdown files (as ``kb eval`` indexes them), written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with (RETRIEVAL / name / "corpus.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            doc = json.loads(line)
            path = out / f"{i:05d}.md"
            heading = f"# {doc['title']}\n\n" if doc.get("title") else ""
            path.write_text(heading + doc["text"] + "\n", encoding="utf-8")
            files.append(path)
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedding-model")
    ap.add_argument("--folders", nargs="+", default=["md_kb_zh", "pdf_zh_text"])
    ap.add_argument("--retrieval", help="instead of --folders: the passages of ../shared/data/retrieval/NAME")
    ap.add_argument("--no-ocr", action="store_true", help="skip OCR of scanned pages")
    ap.add_argument("--threads", type=int, help="the embedder's threads (n_threads); default: the settings'")
    ap.add_argument("--repeats", type=int, default=3, help="pipeline + replay pairs; the median ratio is the result")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        extra: dict[str, object] = {"ocr": False} if args.no_ocr else {}
        if args.threads:
            extra["n_threads"] = args.threads
        settings = load_settings(data_dir=tmp, embedding_model=args.embedding_model, **extra)
        manager = KnowledgeBaseManager(settings)
        emb = manager.embedder()  # model load is start-up cost, not ingestion
        emb.encode_documents(["预热 warm-up"] * 8)
        manager.warm()  # so is what the app warms at start (a loader process, jieba's dictionary)
        if args.retrieval:
            files = passages_as_files(args.retrieval, settings.tmp_dir / "bench-passages")
        else:
            files = sorted(f for d in args.folders for f in (DOCS / d).iterdir() if f.is_file())
        size = sum(f.stat().st_size for f in files)
        print(f"model={settings.embedding_model} files={len(files)} ({size / 2**20:.1f} MB)")
        ratios, steady = [], []
        for r in range(args.repeats):
            ratio, from_first = _run(manager, emb, files, f"bench{r}", verbose=r == 0)
            ratios.append(ratio)
            steady.append(from_first)
        print(f"median of {args.repeats}: ratio {statistics.median(ratios):.2f}, "
              f"from the first embedding call on {statistics.median(steady):.2f}")
        manager.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu() -> tuple[float, float]:
    """CPU-s so far of this process (all threads) and of its child processes: the live loader workers from /proc,
    the exited ones from rusage."""
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = children.ru_utime + children.ru_stime
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:  # ppid; utime and stime are fields 14 and 15 of stat
                total += (int(fields[11]) + int(fields[12])) / tick
    return time.process_time(), total


def _replay(emb: Embedder, calls: list[list[str]]) -> float:
    t = time.perf_counter()
    for texts in calls:
        emb.encode_documents(texts)
    return time.perf_counter() - t


def _run(manager: KnowledgeBaseManager, emb: Embedder, files: list[Path], name: str,
         verbose: bool) -> tuple[float, float]:
    """One pipeline run into a new KB, then the bare embedder on exactly the calls it made; returns the ratios.
    Each pair runs back to back, so a change in the machine's speed (a shared VM) hits both sides alike."""
    calls: list[list[str]] = []
    first: list[float] = []  # when the first embedding call came
    real = emb.encode_documents

    def recording(texts):  # the same object the pipeline uses: record, then run the real model
        first.append(first[0] if first else time.perf_counter())
        calls.append(list(texts))
        return real(texts)

    emb.encode_documents = recording
    kb = manager.create(name)
    app0, kids0 = _cpu()
    t = time.perf_counter()
    try:
        results = kb.ingest(files)
    finally:
        dt = time.perf_counter() - t
        del emb.encode_documents
    app1, kids1 = _cpu()
    wait = first[0] - t if first else dt  # before the first embedding call: nothing to overlap with yet
    chunks = sum(r.chunks for r in results)
    replays = []
    for _ in range(2):
        c = time.process_time()
        replays.append((_replay(emb, calls), time.process_time() - c))
    raw, raw_cpu = min(replays)  # the faster of two: the embedder's own limit, less noise
    embedded = sum(len(c) for c in calls)
    ratio = (chunks / dt) / (embedded / raw)
    steady = (chunks / (dt - wait)) / (embedded / raw)
    print(f"{name}: indexed={sum(r.status == 'indexed' for r in results)} chunks={chunks} | pipeline {dt:.1f} s, "
          f"{chunks / dt:.1f} chunks/s | raw embedder on the same {embedded} texts ({len(calls)} calls): {raw:.1f} s, "
          f"{embedded / raw:.1f} chunks/s | ratio {ratio:.2f} | first embedding call after {wait:.1f} s, "
          f"ratio from it on {steady:.2f}")
    # What the pipeline spends beside the embedder's own CPU (parsing, splitting, jieba, storing, and whatever the
    # embedder loses to sharing cores), and the ratio no scheduling could beat with that much work on these cores.
    beside = (app1 - app0) - raw_cpu + (kids1 - kids0)
    cores = usable_cores()
    print(f"  CPU-s: embedder replay {raw_cpu:.1f}, app beside it {app1 - app0 - raw_cpu:.1f}, loader processes "
          f"{kids1 - kids0:.1f}; on {cores} cores that work bounds the ratio at "
          f"{min(1.0, raw / ((raw_cpu + beside) / cores)):.2f}")
    if verbose:
        for res in results:
            print("  " + res.message())
    return ratio, steady


if __name__ == "__main__":
    main()
