"""A cross-lingual retrieval check built from the shared sets: questions in one language, passages in the other.

    python -m bench.crosslingual translate --limit 100   # once; writes bench/data/crosslingual
    python -m bench.crosslingual build OUT_DIR           # BEIR dirs for `python -m kb eval`
    python -m kb eval OUT_DIR/en-zh --embedding-model MODEL --mode dense,hybrid:0.5

- ``en-zh``: every 5th CMRC 2018 question (the first 100 of them), translated to English by the packaged LLM,
  over all 256 Chinese passages.
- ``zh-en``: every 10th SciFact claim (up to 100), translated to Chinese, over its gold abstracts plus the
  first 1,000 other abstracts (by id), so one index takes minutes, not an hour.

Only the translated questions are kept in the repo (with the id and text they came from); passages and qrels
are read from ../shared/data at build time. Greedy decoding makes the translation reproducible.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval"
HERE = Path(__file__).resolve().parent / "data" / "crosslingual"
SETS = {  # name -> (source set, split, translated queries file, target language, every n-th query, distractors)
    "en-zh": ("cmrc2018-trial", "test", "cmrc2018-questions-en.jsonl", "English", 5, None),
    "zh-en": ("scifact-train", "train", "scifact-claims-zh.jsonl", "Simplified Chinese", 10, 1000),
}


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _qrels(src: Path, split: str) -> dict[str, dict[str, int]]:
    from kb.evaluate import load_beir

    return load_beir(src, split).qrels


def _picked(src: Path, split: str, step: int) -> list[tuple[str, str]]:
    qrels = _qrels(src, split)
    queries = {str(q["_id"]): q["text"] for q in _jsonl(src / "queries.jsonl") if str(q["_id"]) in qrels}
    return [(qid, queries[qid]) for qid in sorted(queries)[::step]]


# One worked example per direction: without it the model answers the question instead of translating it.
_EXAMPLES = {
    "English": ("王安石的变法从哪一年开始？", "In which year did Wang Anshi's reforms begin?"),
    "Simplified Chinese": ("Vitamin D deficiency increases the risk of hip fracture in older adults.",
                           "维生素D缺乏会增加老年人髋部骨折的风险。"),
}


def _prompt(language: str, text: str) -> list[dict[str, str]]:
    src, dst = _EXAMPLES[language]
    rule = (f"You are a translator. Translate the text into {language}, sentence for sentence. A question stays a "
            "question: never answer it. Keep names and numbers. Reply with the translation only.")
    return [{"role": "system", "content": rule}, {"role": "user", "content": src},
            {"role": "assistant", "content": dst}, {"role": "user", "content": text}]


def translate(llm_model: str | None, limit: int | None = None) -> None:
    from configs.settings import load_settings
    from llm.backends import create_backend
    from llm.backends.base import GenParams, complete

    settings = load_settings(**({"llm_model": llm_model} if llm_model else {}))
    settings.prepare_dirs()
    backend = create_backend(settings)
    HERE.mkdir(parents=True, exist_ok=True)
    for name, (src_name, split, out_name, language, step, _) in SETS.items():
        out = HERE / out_name
        done = {d["_id"] for d in _jsonl(out)} if out.exists() else set()
        with open(out, "a", encoding="utf-8") as f:
            for qid, text in _picked(SHARED / src_name, split, step)[:limit]:
                if qid in done:
                    continue
                messages = _prompt(language, text)
                answer = complete(backend, messages, GenParams(temperature=0.0, max_tokens=160))
                line = re.sub(r"\s+", " ", answer).strip().strip('"“”')
                f.write(json.dumps({"_id": qid, "text": line, "source": text}, ensure_ascii=False) + "\n")
                f.flush()
                print(name, qid, line, flush=True)


def build(out_dir: Path) -> None:
    for name, (src_name, split, queries_name, _, _, distractors) in SETS.items():
        src = SHARED / src_name
        queries = _jsonl(HERE / queries_name)
        qrels = _qrels(src, split)
        ids = {q["_id"] for q in queries}
        keep = {d for q in ids for d in qrels[q]}
        corpus = _jsonl(src / "corpus.jsonl")
        if distractors is not None:
            others = sorted(str(d["_id"]) for d in corpus if str(d["_id"]) not in keep)[:distractors]
            keep |= set(others)
        else:
            keep = {str(d["_id"]) for d in corpus}
        dest = out_dir / name
        (dest / "qrels").mkdir(parents=True, exist_ok=True)
        with open(dest / "corpus.jsonl", "w", encoding="utf-8") as f:
            for d in corpus:
                if str(d["_id"]) in keep:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
        with open(dest / "queries.jsonl", "w", encoding="utf-8") as f:
            for q in queries:
                f.write(json.dumps({"_id": q["_id"], "text": q["text"]}, ensure_ascii=False) + "\n")
        with open(dest / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in sorted(ids):
                for d, r in qrels[q].items():
                    f.write(f"{q}\t{d}\t{r}\n")
        print(f"{dest}: {len(queries)} queries, {len(keep)} passages (split {split})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("translate")
    t.add_argument("--llm-model")
    t.add_argument("--limit", type=int, help="translate at most this many questions per set")
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "translate":
        translate(args.llm_model, args.limit)
    else:
        build(args.out)


if __name__ == "__main__":
    main()
