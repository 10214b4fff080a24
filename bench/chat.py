"""Chat speed: time to first token and decode speed of the LLM, plain and over a KB; and many users at once.

    python -m bench.chat [--llm-model qwen2.5-coder-1.5b]
    python -m bench.chat --concurrency [--users 4 --slots 4 --repeats 3 --max-tokens 128 --ubatch 512]

``--concurrency`` measures, in one run with one model and slot count, the tokens/s of ``users`` requests at once
over the same requests one after another: for the bare engine (xllamacpp driven directly) and for the app
(concurrent ChatService streams, through the fair queue and the llama.cpp backend), and their quotient (how much
of the engine's speed-up the app keeps); then a lone user's time to first token with 1 slot and with ``slots``.
Phases interleave within each repeat so machine noise hits them alike; medians are printed.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.settings import load_settings
from llm import prompts
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


# Plain chat (no KB), so the bare engine gets exactly the messages the app sends. Different subjects give
# different answers; the tag in front keeps one phase from reusing another's prompt cache.
QUESTIONS = ["Explain in detail how a bicycle gear system works.", "Describe the water cycle step by step.",
             "Write a short story about a lighthouse keeper.", "Explain how a compiler turns code into a program."]


def bare_server(model: Path, slots: int, settings: Any, ubatch: int | None, sock_dir: Path) -> Any:
    """llama.cpp with ``slots`` slots, set up like LlamaCppBackend but without any of the app around it."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(model)
    p.n_ctx = settings.n_ctx * slots
    p.n_parallel = slots
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = settings.n_threads
    if ubatch:
        p.n_ubatch = ubatch
    p.verbosity = -1
    p.ui = False
    p.offline = True
    p.api_keys = [secrets.token_hex(16)]
    p.hostnames = [str(Path(tempfile.mkdtemp(prefix="b-", dir=sock_dir)) / "s.sock")]  # short: sun_path limit
    return xllamacpp.Server(p)


def bare_request(server: Any, question: str, max_tokens: int) -> tuple[int, float]:
    """(tokens, time to first token) of one streamed request straight into llama.cpp."""
    body = {"messages": prompts.chat_messages(question), "stream": True, "max_tokens": max_tokens,
            "temperature": 0.0, "cache_prompt": True}
    t0, got = time.perf_counter(), {"n": 0, "first": 0.0}

    def on_chunk(chunk: dict[str, Any]) -> bool:
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                got["n"] += 1
                got["first"] = got["first"] or time.perf_counter() - t0
        return False

    server.handle_chat_completions(body, on_chunk)
    return got["n"], got["first"]


def app_request(services: Services, question: str, max_tokens: int, user: str) -> tuple[int, float]:
    t0, n, first = time.perf_counter(), 0, 0.0
    options = ChatOptions(max_tokens=max_tokens, temperature=0.0, user=user)
    for ev in services.chat.stream(question, [], options):
        if ev.type == "token" and ev.data:
            n += 1
            first = first or time.perf_counter() - t0
    return n, first


def speedup(one: Callable[[str, int], tuple[int, float]], tag: str, users: int) -> tuple[float, float, float]:
    """(sequential tokens/s, concurrent tokens/s, ratio) for ``users`` requests."""
    asks = [f"({tag}-s{i}) {QUESTIONS[i % len(QUESTIONS)]}" for i in range(users)]
    t = time.perf_counter()
    seq_tokens = sum(one(q, i)[0] for i, q in enumerate(asks))
    seq = seq_tokens / (time.perf_counter() - t)
    out: list[int] = [0] * users
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            out[i] = one(f"({tag}-c{i}) {QUESTIONS[i % len(QUESTIONS)]}", i)[0]
        except BaseException as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(users)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    con = sum(out) / (time.perf_counter() - t)
    return seq, con, con / seq


def concurrency(args: argparse.Namespace, tmp: Path) -> None:
    from llm.models import resolve_gguf

    # One GGUF for the three servers (a packaged model is assembled once, not into each data dir).
    model = resolve_gguf(args.llm_model or load_settings().llm_model, tmp / "models")

    def services_with(slots: int) -> Services:
        settings = load_settings(data_dir=tmp / f"s{slots}", llm_model=str(model), llm_slots=slots,
                                 llm_ubatch=args.ubatch, max_queued_chats=max(8, args.users),
                                 max_chats_per_user=args.users)
        settings.prepare_dirs()
        services = Services(settings)
        services.chat  # noqa: B018  (loads the model)
        return services

    app = services_with(args.slots)
    settings = app.settings
    bare = bare_server(model, args.slots, settings, args.ubatch, tmp)
    lone = services_with(1) if args.slots != 1 else app
    print(f"model={model.name} slots={args.slots} users={args.users} max_tokens={args.max_tokens} "
          f"n_threads={settings.n_threads} ubatch={args.ubatch or 'default'}")
    # Warm-up: the first request on a fresh server pays one-off costs that would flatter the concurrent phase.
    bare_request(bare, QUESTIONS[0], 8)
    app_request(app, QUESTIONS[0], 8, "warm")
    app_request(lone, QUESTIONS[0], 8, "warm")
    rows: dict[str, list[float]] = {k: [] for k in ("bare", "app", "app/bare", "ttft1", "ttftN")}
    for r in range(args.repeats):
        def run_bare(r: int = r) -> tuple[float, float, float]:
            return speedup(lambda q, i: bare_request(bare, q, args.max_tokens), f"b{r}", args.users)

        def run_app(r: int = r) -> tuple[float, float, float]:
            return speedup(lambda q, i: app_request(app, q, args.max_tokens, f"user{i}"), f"a{r}", args.users)

        # Alternate which goes first, so a drift in machine load does not favour one side.
        if r % 2:
            (a_seq, a_con, a), (b_seq, b_con, b) = run_app(), run_bare()
        else:
            (b_seq, b_con, b), (a_seq, a_con, a) = run_bare(), run_app()
        def ttft(services: Services, tag: str, r: int = r) -> float:
            return app_request(services, f"({tag}-{r}) {QUESTIONS[0]}", 8, "lone")[1]

        if r % 2 == 0:  # alternate which is measured first, as above
            ttft1, ttftn = ttft(lone, "t1"), ttft(app, "tn")
        else:
            ttftn, ttft1 = ttft(app, "tn"), ttft(lone, "t1")
        print(f"repeat {r + 1}: bare {b_seq:.1f} -> {b_con:.1f} tok/s ({b:.2f}x) | app {a_seq:.1f} -> {a_con:.1f} "
              f"tok/s ({a:.2f}x) | app/bare {a / b:.2f} | lone TTFT slots=1 {ttft1:.2f}s, slots={args.slots} "
              f"{ttftn:.2f}s", flush=True)
        for k, v in zip(rows, (b, a, a / b, ttft1, ttftn), strict=True):
            rows[k].append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"median of {args.repeats}: bare engine {med['bare']:.2f}x | app {med['app']:.2f}x | "
          f"app/bare {med['app/bare']:.2f} | lone user TTFT slots=1 {med['ttft1']:.2f}s vs slots={args.slots} "
          f"{med['ttftN']:.2f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-model")
    ap.add_argument("--concurrency", action="store_true", help="many users at once: app vs bare engine")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ubatch", type=int, default=None, help="llama.cpp n_ubatch (default: llama.cpp's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if args.concurrency:
        try:
            concurrency(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
