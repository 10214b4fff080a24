"""Chat speed: time to first token and decode speed of the LLM, plain and over a KB.

    python -m bench.chat [--llm-model qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from configs.settings import load_settings
from llm.chat import ChatOptions
from services import Services

DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "documents"


def run(services: Services, question: str, kb: str | None) -> str:
    t = time.perf_counter()
    first = None
    pieces = 0
    for ev in services.chat.stream(question, [], ChatOptions(kb=kb, max_tokens=128, temperature=0.0)):
        if ev.type == "token":
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    ttft = (first or end) - t
    rate = pieces / (end - first) if first and end > first else 0.0
    return f"ttft={ttft:.2f}s pieces={pieces} decode={rate:.1f} pieces/s total={end - t:.1f}s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-model")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        settings = load_settings(data_dir=tmp, llm_model=args.llm_model, condense_question=False)
        settings.prepare_dirs()
        services = Services(settings)
        t = time.perf_counter()
        services.backend  # noqa: B018
        print(f"model={settings.llm_model} load={time.perf_counter() - t:.1f}s")
        kb = services.kbs.create("bench")
        kb.ingest(sorted((DOCS / "md_kb_zh").glob("*.md")))
        print("plain:", run(services, "用五句话介绍一下杭州的历史和文化。", None))
        print("kb   :", run(services, "什么是数据并行？", "bench"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
