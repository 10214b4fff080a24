"""``python -m kb models``: the packaged and configured models, whether they are here, and how fast they run.

Speeds come from ``--measure`` (a fixed sample encoded / generated on this machine, in this process) and are kept
in ``<data_dir>/.system/model-speeds.json``, so a plain listing shows the last measurement and its date.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from configs.settings import Settings

# A fixed sample, the same on every machine: ~400-character Chinese chunks and ~400-character English ones.
_ZH = ("检索增强生成先把用户的问题变成向量，在知识库里找出最相近的文本片段，再把这些片段和问题一起交给语言模型。"
       "片段切得太短会丢失上下文，切得太长又会稀释相关内容，所以切分时按句号、问号和段落边界断开，并让相邻片段"
       "重叠一小段。嵌入模型决定了中文和英文问题能否找到正确的段落；混合检索再用关键词得分补上专有名词和数字。"
       "回答时模型只依据检索到的内容，并用方括号标出来源编号，用户点开编号就能看到原文所在的页面。")
_EN = ("Retrieval-augmented generation first turns the user's question into a vector, finds the closest passages "
       "in the knowledge base, and hands them to the language model together with the question. Chunks that are "
       "too short lose their context and chunks that are too long dilute what matters, so the splitter breaks at "
       "sentence and paragraph boundaries and lets neighbours overlap a little. Hybrid search adds keyword scores "
       "for names and numbers, and every answer cites the passages it used.")
SAMPLE_CHUNKS = 32


def _speeds_file(settings: Settings) -> Path:
    return settings.data_dir / ".system" / "model-speeds.json"


def _load_speeds(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads(_speeds_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_speeds(settings: Settings, speeds: dict[str, Any]) -> None:
    path = _speeds_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(speeds, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def measure_embedder(spec: str, settings: Settings) -> dict[str, Any]:
    """Load time, then chunks/s on the Chinese and on the English sample (after one warm-up call)."""
    from kb.embeddings import create_embedder
    from kb.remote import remote_options

    t = time.perf_counter()
    emb = create_embedder(spec, settings.embed_batch_size, settings.n_threads,
                          remote=remote_options(settings, "embedding"), models_dir=settings.models_dir,
                          precision=settings.embedding_precision)
    load = time.perf_counter() - t
    emb.encode_documents([_ZH[:50], _EN[:50]])
    out: dict[str, Any] = {"dim": emb.dim, "max_tokens": emb.max_tokens, "load_s": round(load, 2),
                           "bf16": any(getattr(p, "bf16", False) for p in getattr(emb, "parts", (emb,)))}
    for lang, text in (("zh", _ZH), ("en", _EN)):
        t = time.perf_counter()
        emb.encode_documents([text] * SAMPLE_CHUNKS)
        out[f"{lang}_chunks_per_s"] = round(SAMPLE_CHUNKS / (time.perf_counter() - t), 1)
    return out


def measure_llm(settings: Settings) -> dict[str, Any]:
    """Decode tokens/s of the configured LLM on a short fixed prompt (llama.cpp's own timing when it has one)."""
    from llm.backends import create_backend
    from llm.backends.base import GenParams

    backend = create_backend(settings)
    try:
        t = time.perf_counter()
        first, pieces = None, 0
        messages = [{"role": "user", "content": "Explain in five sentences what a knowledge base is."}]
        for _ in backend.stream(messages, GenParams(temperature=0.0, max_tokens=64)):
            first = first or time.perf_counter()
            pieces += 1
        end = time.perf_counter()
        timings = getattr(backend, "last_timings", None) or {}
        rate = timings.get("predicted_per_second") or (pieces / (end - first) if first and end > first else 0.0)
        return {"decode_tokens_per_s": round(float(rate), 1), "first_token_s": round((first or end) - t, 2)}
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


def catalog(settings: Settings, kb_models: dict[str, list[str]],
            measure: list[str] | None = None) -> dict[str, list[dict]]:
    """Every packaged embedder and LLM plus the configured ones, with their last measured speed.

    ``measure``: None measures nothing, [] every installed model, else the models named (embedders or LLMs)."""

    def wanted(name: str) -> bool:
        return measure is not None and (not measure or name in measure)

    from kb.embeddings import _MODULES, PACKAGED
    from llm.models import MODELS

    speeds = _load_speeds(settings)
    when = time.strftime("%Y-%m-%d %H:%M")
    embedders = []
    specs = list(PACKAGED) + [s for s in [settings.embedding_model, *kb_models] if s not in PACKAGED]
    for spec in dict.fromkeys(specs):
        row: dict[str, Any] = {"model": spec, "default": spec == settings.embedding_model,
                               "used_by": kb_models.get(spec, [])}
        if spec in PACKAGED:
            row["package"] = PACKAGED[spec][0]
            row["installed"] = importlib.util.find_spec(_MODULES[spec]) is not None
        else:
            row["source"] = "remote server" if spec.startswith(("http://", "https://")) else "local directory"
        if wanted(spec) and row.get("installed", True):
            try:
                speeds[f"embed:{spec}"] = measure_embedder(spec, settings) | {"measured": when}
            except Exception as e:  # one broken model must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"
        row.update(speeds.get(f"embed:{spec}", {}))
        embedders.append(row)
    llms = []
    configured = settings.openai_model if settings.llm_backend == "openai" else settings.llm_model
    for key, m in MODELS.items():
        row = {"model": key, "title": m.title, "size_mb": round(m.size / 2**20), "package": m.pins().split()[0]
               + (f" (+{len(m.parts) - 1} parts)" if len(m.parts) > 1 else ""),
               "installed": all(_dist_installed(p.dist) for p in m.parts),
               "default": settings.llm_backend != "openai" and key == settings.llm_model}
        llms.append(row)
    if configured not in MODELS:
        llms.append({"model": configured, "backend": settings.llm_backend, "default": True,
                     **({"url": settings.openai_base_url} if settings.llm_backend == "openai" else {})})
    if wanted(configured):
        try:
            speeds[f"llm:{configured}"] = measure_llm(settings) | {"measured": when}
        except Exception as e:
            speeds[f"llm:{configured}"] = {"error": f"{type(e).__name__}: {e}", "measured": when}
    for row in llms:
        row.update(speeds.get(f"llm:{row['model']}", {}))
    rerank = [{"model": settings.rerank_model, "default": True}] if settings.rerank_model else []
    if measure is not None:
        _save_speeds(settings, speeds)
    return {"embedding": embedders, "llm": llms, "rerank": rerank}


def _dist_installed(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


def render(cat: dict[str, list[dict]]) -> str:
    lines = ["Embedding models (chunks/s on a fixed ~400-character sample; --measure to refresh):"]
    for r in cat["embedding"]:
        mark = "*" if r["default"] else " "
        where = r.get("package") or r.get("source", "")
        have = "" if r.get("installed", True) else "  NOT INSTALLED: pip install " + r["package"]
        speed = (f"zh {r['zh_chunks_per_s']:>6} /s  en {r['en_chunks_per_s']:>6} /s  dim {r['dim']}  "
                 f"{'(bf16) ' if r.get('bf16') else ''}(measured {r['measured']})" if "zh_chunks_per_s" in r
                 else "speed not measured")
        used = f"  used by: {', '.join(r['used_by'])}" if r["used_by"] else ""
        err = f"  error: {r['error']}" if r.get("error") else ""
        lines.append(f" {mark} {r['model']:<22} {speed}  [{where}]{have}{used}{err}")
    lines.append("Chat models (decode tokens/s):")
    for r in cat["llm"]:
        mark = "*" if r["default"] else " "
        speed = (f"{r['decode_tokens_per_s']} tok/s, first token {r['first_token_s']} s (measured {r['measured']})"
                 if "decode_tokens_per_s" in r else r.get("error") or "speed not measured")
        where = r.get("package") or r.get("url") or r.get("backend", "")
        have = "" if r.get("installed", True) else "  NOT INSTALLED"
        lines.append(f" {mark} {r['model']:<22} {speed}  [{where}]{have}")
    if cat["rerank"]:
        lines.append("Reranker: " + ", ".join(r["model"] for r in cat["rerank"]))
    lines.append("* = the default in these settings")
    return "\n".join(lines)
