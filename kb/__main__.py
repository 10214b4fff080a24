"""Command line: ``python -m kb {list,create,set,delete,ingest,files,rm,rebuild,search,jobs,cancel,export,import,
feedback,users,eval,chat,models}``.

Every subcommand takes ``--data-dir``. Errors are one line on stderr and exit code 1 or 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.settings import Settings, load_settings
from kb.types import KBError


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", type=Path, help="knowledge base root (default: knowledge_base/)")
    p.add_argument("--embedding-model", help="packaged key, local sentence-transformers dir or http(s)://HOST:PORT/v1#MODEL")
    return p


def _or_none(kind: type) -> Callable[[str], Any]:
    """An option value where '' means None (reset)."""
    def parse(text: str) -> Any:
        return None if text == "" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _parser() -> argparse.ArgumentParser:
    common = _common()
    ap = argparse.ArgumentParser(prog="python -m kb", description="Knowledge bases from the command line")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", parents=[common], help="list knowledge bases")
    p = sub.add_parser("create", parents=[common], help="create a knowledge base")
    p.add_argument("name")
    p.add_argument("--mode", choices=["dense", "keyword", "hybrid"])
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--chunk-overlap", type=int)
    # Only the options given are changed; '' resets one (search settings follow the app again, no KB prompt).
    p = sub.add_parser("set", parents=[common], help="change a KB's own settings (search, prompt)",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("name")
    p.add_argument("--mode", dest="search_mode", type=_or_none(str), choices=["dense", "keyword", "hybrid", None])
    p.add_argument("--kb-alpha", dest="hybrid_alpha", type=_or_none(float), help="hybrid weight of the dense score")
    p.add_argument("--threshold", dest="score_threshold", type=_or_none(float))
    p.add_argument("--top-k", dest="top_k", type=_or_none(int))
    p.add_argument("--prompt", type=_or_none(str), help="added to the answer system prompt of this KB")
    p = sub.add_parser("delete", parents=[common], help="delete a knowledge base and its files")
    p.add_argument("name")
    p = sub.add_parser("ingest", parents=[common], help="add files or folders (creates the KB if needed)")
    p.add_argument("--kb", required=True)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--replace", action="store_true",
                   help="a file whose name is already in the KB replaces it (default: keep both, number the new one)")
    p = sub.add_parser("files", parents=[common], help="list a KB's files")
    p.add_argument("--kb", required=True)
    p = sub.add_parser("rm", parents=[common], help="delete a file (name or sha256) from a KB")
    p.add_argument("--kb", required=True)
    p.add_argument("file")
    p = sub.add_parser("rebuild", parents=[common], help="re-index every file of a KB (beside the live index)")
    p.add_argument("--kb", required=True)
    p.add_argument("--chunk-size", type=int, help="new chunk size (recorded with the KB)")
    p.add_argument("--chunk-overlap", type=int)
    p = sub.add_parser("jobs", parents=[common], help="recent ingest/rebuild jobs")
    p.add_argument("--kb")
    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    p.add_argument("job")
    p = sub.add_parser("export", parents=[common], help="write a KB (files, chunks, vectors) to a zip file")
    p.add_argument("name")
    p.add_argument("file", type=Path)
    p = sub.add_parser("import", parents=[common], help="load an exported KB here, without re-embedding")
    p.add_argument("file", type=Path)
    p.add_argument("--name", help="name for the imported KB (default: its exported name)")
    p = sub.add_parser("feedback", parents=[common], help="rated answers, for review")
    p.add_argument("action", choices=["export"])
    p.add_argument("--kb", help="only answers from conversations over this KB")
    p.add_argument("--rating", type=int, choices=[1, -1], help="only thumbs up (1) or down (-1)")
    p.add_argument("--output", type=Path, help="write JSONL here instead of stdout")
    p = sub.add_parser("users", parents=[common], help="user accounts and their API keys")
    users = p.add_subparsers(dest="action", required=True)
    q = users.add_parser("add", parents=[common], help="add a user and print their first API key")
    q.add_argument("user")
    q.add_argument("--admin", action="store_true", help="role admin (default: member)")
    q.add_argument("--password-stdin", action="store_true", help="read a UI password from stdin")
    q = users.add_parser("key", parents=[common], help="issue another API key for a user and print it")
    q.add_argument("user")
    q.add_argument("--label", default="")
    q = users.add_parser("passwd", parents=[common], help="set a user's UI password (read from stdin)")
    q.add_argument("user")
    q = users.add_parser("revoke", parents=[common], help="revoke an API key by its id (see 'users list')")
    q.add_argument("key_id", type=int)
    users.add_parser("list", parents=[common], help="users and their keys")
    p = sub.add_parser("search", parents=[common], help="search a KB")
    p.add_argument("--kb", required=True)
    p.add_argument("query")
    p.add_argument("--top-k", type=int)
    p.add_argument("--threshold", type=float)
    p.add_argument("--mode", choices=["dense", "keyword", "hybrid"])
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("eval", parents=[common], help="retrieval quality on a BEIR-layout dataset")
    p.add_argument("dataset_dir", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--mode", help="dense, keyword, hybrid, or hybrid:ALPHA (several: comma-separated)")
    p.add_argument("--compare", action="store_true", help="score dense, keyword and hybrid side by side")
    p.add_argument("--limit-queries", type=int)
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--chunk-overlap", type=int)
    p.add_argument("--alpha", type=float, help="hybrid weight of the dense score")
    p.add_argument("--no-title-prefix", action="store_true")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("models", parents=[common], help="packaged and configured models, and their speed here")
    p.add_argument("--measure", nargs="*", metavar="MODEL",
                   help="measure the speed of these models now (none named: every installed one; minutes)")
    p.add_argument("--llm-model", help="the chat model to measure (default: the configured one)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("chat", parents=[common], help="terminal chat (with --kb: over a knowledge base)")
    p.add_argument("--kb")
    p.add_argument("--llm-model", help="packaged GGUF key, .gguf path or HF dir")
    return ap


def _expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to ingest and their identities: a folder's files by their path inside it (``a/README.md``
    and ``b/README.md`` stay two files), a single file by its name."""
    out: list[Path] = []
    names: list[str] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            out.extend(found)
            names.extend(f.relative_to(p).as_posix() for f in found)
        elif p.is_file():
            out.append(p)
            names.append(p.name)
        else:
            raise KBError(f"no such file or folder: {p}")
    return out, names


def _settings(args: argparse.Namespace) -> Settings:
    extra = {}
    if args.cmd == "eval" and args.chunk_size:
        extra["chunk_size"] = args.chunk_size
    if args.cmd == "eval" and args.chunk_overlap is not None:
        extra["chunk_overlap"] = args.chunk_overlap
    if getattr(args, "alpha", None) is not None:
        extra["hybrid_alpha"] = args.alpha
    if getattr(args, "no_title_prefix", False):
        extra["title_prefix"] = False
    if getattr(args, "llm_model", None):
        extra["llm_model"] = args.llm_model
    return load_settings(data_dir=args.data_dir, embedding_model=args.embedding_model, **extra)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.prepare_dirs()
    from kb.service import KB_SETTINGS, KnowledgeBaseManager

    if args.cmd == "eval":
        return _eval(args, settings)
    manager = KnowledgeBaseManager(settings)
    if args.cmd == "list":
        for info in manager.list():
            print(json.dumps(info, ensure_ascii=False))
    elif args.cmd == "create":
        manager.create(args.name, search_mode=args.mode, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
        print(f"created knowledge base '{args.name}'")
    elif args.cmd == "set":
        values = {k: getattr(args, k) for k in KB_SETTINGS if hasattr(args, k)}
        if not values:
            raise KBError("nothing to set: give --mode, --kb-alpha, --threshold, --top-k or --prompt")
        print(json.dumps(manager.get(args.name).update(**values), ensure_ascii=False))
    elif args.cmd == "delete":
        manager.delete(args.name)
        print(f"deleted knowledge base '{args.name}'")
    elif args.cmd == "ingest":
        paths, names = _expand(args.paths)  # before creating anything: a typo must not leave an empty KB
        kb = manager.create(args.kb, exist_ok=True)
        results = kb.ingest(paths, names, progress=_progress, replace=args.replace)
        for r in results:
            print(r.message())
        counts = {s: sum(r.status == s for r in results) for s in ("indexed", "replaced", "duplicate", "failed")}
        print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
              f"; {sum(r.chunks for r in results if r.status in ('indexed', 'replaced'))} chunks")
        return 1 if counts["failed"] and not (counts["indexed"] + counts["replaced"] + counts["duplicate"]) else 0
    elif args.cmd == "files":
        for f in manager.get(args.kb).files():
            print(f"{f['status']:8} {f['chunks']:6} {f['name']}  {f['error'] or ''}")
    elif args.cmd == "rm":
        removed = manager.get(args.kb).delete_file(args.file)["removed"]
        print(f"removed {', '.join(r['name'] for r in removed)}")
    elif args.cmd == "rebuild":
        results = manager.get(args.kb).rebuild(progress=_progress, chunk_size=args.chunk_size,
                                               chunk_overlap=args.chunk_overlap)
        for r in results:
            print(r.message())
    elif args.cmd == "jobs":
        for j in manager.jobs.list(manager.get(args.kb).id if args.kb else None):
            print(f"{j['id']}  {j['status']:9} {j['kind']:7} {j['kb']}  {j['progress']:5.0%}  "
                  f"{j['chunks_embedded']} chunks embedded  {j['error'] or j['message']}")
    elif args.cmd == "cancel":
        job = manager.jobs.cancel(args.job)
        print(f"job {job['id']}: {'cancel requested' if job['status'] == 'running' else job['status']}")
    elif args.cmd == "export":
        out = manager.export_kb(args.name, args.file)
        print(f"exported '{out['name']}': {out['files']} files, {out['chunks']} chunks -> {out['path']}")
    elif args.cmd == "import":
        kb = manager.import_kb(args.file, args.name)
        info = kb.info()
        print(f"imported '{kb.name}': {info['files']} files, {info['chunks']} chunks")
    elif args.cmd == "search":
        hits = manager.get(args.kb).search(args.query, top_k=args.top_k, threshold=args.threshold, mode=args.mode)
        if args.json:
            print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=1))
        elif not hits:
            print("no chunk passed the threshold")
        for i, h in enumerate([] if args.json else hits, 1):
            page = f" p.{h.page}" if h.page else ""
            print(f"[{i}] {h.score:.3f} {h.file}{page}  {h.heading or ''}\n    {h.text[:200].replace(chr(10), ' ')}")
    elif args.cmd == "feedback":
        from kb.conversations import Conversations

        rows = Conversations(manager.db).feedback(kb=args.kb, rating=args.rating)
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        n = 0
        try:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        finally:
            if args.output:
                out.close()
                print(f"wrote {n} rated answers to {args.output}", file=sys.stderr)
    elif args.cmd == "users":
        return _users(args, manager)
    elif args.cmd == "models":
        from kb.catalog import catalog, render

        used: dict[str, list[str]] = {}
        for info in manager.list():
            used.setdefault(info["embedding_model"], []).append(info["name"])
        cat = catalog(settings, used, measure=args.measure)
        print(json.dumps(cat, ensure_ascii=False, indent=1) if args.json else render(cat))
    elif args.cmd == "chat":
        return _chat(args, settings, manager)
    return 0


def _users(args: argparse.Namespace, manager: Any) -> int:
    from kb.users import Users

    users = Users(manager.db)
    admin = users.local_admin()  # the CLI runs on the server's own data: it acts as the local admin
    if args.action == "add":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        user = users.add(args.user, "admin" if args.admin else "member", password)
        key, _ = users.issue_key(user, "first key")
        print(key)
        print(f"added {user.role} '{user.name}'; the line above is their API key (shown once). A running app "
              "started without any credential needs a restart to require logins.", file=sys.stderr)
    elif args.action == "key":
        key, _ = users.issue_key(users.get(args.user), args.label)
        print(key)
    elif args.action == "passwd":
        users.set_password(args.user, sys.stdin.readline().rstrip("\n"))
        print(f"password of '{args.user}' set", file=sys.stderr)
    elif args.action == "revoke":
        info = users.revoke_key(admin, args.key_id)
        print(f"revoked key {info['id']} ({info['prefix']}…)")
    else:
        for u in users.list():
            keys = [k for k in users.keys(users.get(u["name"])) if not k["revoked"]]
            print(f"{u['name']:20} {u['role']:7} password={'yes' if u['has_password'] else 'no':3} keys: "
                  + (", ".join(f"{k['id']}:{k['prefix']}…" for k in keys) or "-"))
    return 0


def _progress(frac: float, message: str) -> None:
    print(f"[{frac:5.0%}] {message}", file=sys.stderr)


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from kb.evaluate import evaluate

    modes = ["dense", "keyword", "hybrid"] if args.compare else (args.mode or settings.search_mode).split(",")
    out = evaluate(args.dataset_dir, settings, split=args.split, top_k=args.top_k, modes=modes,
                   limit_queries=args.limit_queries, progress=not args.json)
    if args.json:
        print(json.dumps(out[modes[0]] if len(modes) == 1 else out, ensure_ascii=False))
        return 0
    first = out[modes[0]]
    print(f"dataset {args.dataset_dir} split={args.split} embedding={first['embedding_model']} "
          f"chunks={first['chunks']} queries={first['queries']} index_seconds={first['index_seconds']}")
    print(f"{'mode':12} {'nDCG@10':>8} {'Recall@10':>10} {'MRR@10':>8} {'p50 ms':>8}")
    for mode, m in out.items():
        print(f"{mode:12} {m['ndcg@10']:8.4f} {m['recall@10']:10.4f} {m['mrr@10']:8.4f} {m['query_p50_ms']:8.1f}")
    return 0


def _chat(args: argparse.Namespace, settings: Settings, manager) -> int:
    from llm.backends import create_backend
    from llm.chat import ChatOptions, ChatService

    if args.kb:
        manager.get(args.kb)
    print(f"loading {settings.llm_model} ...", file=sys.stderr)
    service = ChatService(settings, manager, create_backend(settings))
    history: list[tuple[str, str]] = []
    print("type a question; 'clear' resets the history, 'exit' quits")
    while True:
        try:
            question = input("\nuser> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if question in {"exit", "quit"}:
            return 0
        if question == "clear":
            history.clear()
            continue
        if not question:
            continue
        print("assistant> ", end="", flush=True)
        answer = ""
        for ev in service.stream(question, history, ChatOptions(kb=args.kb)):
            if ev.type == "token":
                print(ev.data, end="", flush=True)
            elif ev.type == "query" and ev.data != question:
                print(f"(searching: {ev.data})\n", end="", flush=True)
            elif ev.type == "done":
                answer = ev.data["answer"]
                from llm.chat import format_sources

                if ev.data["sources"]:
                    print("\n\n" + format_sources(ev.data["sources"], "en"))
        history.append((question, answer))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except KBError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
