"""Retrieval bake-off: every (dataset, embedding model) pair, all three search modes.

    python -m bench.retrieval [--models minilm use-multilingual] [--datasets scifact-train:train cmrc2018-trial:test]

Prints a markdown table (paste into BENCHMARKS.md) and writes bench/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from configs.settings import load_settings
from kb.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "retrieval"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["minilm", "use-multilingual"])
    ap.add_argument("--datasets", nargs="+", default=["scifact-train:train", "cmrc2018-trial:test"])
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--alpha", type=float)
    args = ap.parse_args()
    rows = []
    for spec in args.datasets:
        name, split = spec.split(":")
        for model in args.models:
            settings = load_settings(embedding_model=model, chunk_size=args.chunk_size, hybrid_alpha=args.alpha)
            res = evaluate(DATA / name, settings, split=split, modes=["dense", "keyword", "hybrid"])
            for mode, m in res.items():
                rows.append({"dataset": name, "model": model, "mode": mode, **m})
                print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}"}
    (out / "retrieval.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| dataset | model | mode | nDCG@10 | Recall@10 | MRR@10 | index s | query p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['model']} | {r['mode']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | "
              f"{r['mrr@10']:.4f} | {r['index_seconds']} | {r['query_p50_ms']} |")


if __name__ == "__main__":
    main()
