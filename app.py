"""Start the web app: Gradio UI at /, OpenAI-compatible API at /v1, KB REST API at /api.

    python app.py [--host 127.0.0.1] [--port 7860] [--data-dir knowledge_base]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from configs.settings import Settings, load_settings

if TYPE_CHECKING:
    from kb.users import Users


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Offline knowledge-base chat")
    ap.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, help="default 7860")
    ap.add_argument("--data-dir", type=Path, help="knowledge bases, models and temp files (default knowledge_base/)")
    ap.add_argument("--llm-model", help="packaged GGUF key, a .gguf path or a local HF model dir")
    ap.add_argument("--embedding-model", help="packaged embedding key, a local sentence-transformers dir or http(s)://HOST:PORT/v1#MODEL")
    ap.add_argument("--insecure-no-auth", action="store_true", default=None,
                    help="serve a non-loopback --host with no api_keys or ui_auth (anyone who can reach it has "
                         "full access)")
    return ap.parse_args(argv)


def binding_problem(settings: Settings, users: Users | None = None) -> str | None:
    """Why the server must not start as configured, or None: a non-loopback bind needs a credential (a setting,
    or user accounts in the database)."""
    from api.security import AccessPolicy, is_loopback

    if is_loopback(settings.host) or settings.insecure_no_auth:
        return None
    if AccessPolicy.from_settings(settings, users).enabled:
        return None
    return (f"refusing to serve {settings.host} with no credential: anyone who can reach it could read and delete "
            "every knowledge base. Add a user (python -m kb users add NAME --admin), or set "
            "KBCHAT_API_KEYS='[\"<key>\"]' or KBCHAT_UI_AUTH=user:password, or pass --insecure-no-auth if this "
            "network is trusted.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(host=args.host, port=args.port, data_dir=args.data_dir, llm_model=args.llm_model,
                             embedding_model=args.embedding_model, insecure_no_auth=args.insecure_no_auth)
    try:
        from api.security import parse_ui_auth

        parse_ui_auth(settings.ui_auth)
    except ValueError as e:  # a malformed ui_auth
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings.prepare_dirs()  # offline switches and temp dirs before any heavy import

    def step(msg: str) -> None:
        print(f"[start] {msg}", flush=True)

    step(f"data dir: {settings.data_dir}")
    from kb.types import KBError
    from llm.backends.base import LLMError

    try:
        from services import Services

        services = Services(settings)  # the database: user accounts count as credentials
        problem = binding_problem(settings, services.users)
        if problem:
            services.close()
            print(f"error: {problem}", file=sys.stderr)
            return 2
        t = time.perf_counter()
        step(f"loading embedding model '{settings.embedding_model}'")
        services.kbs.embedder()
        step(f"embedding model ready ({time.perf_counter() - t:.1f}s)")
        t = time.perf_counter()
        step(f"preparing LLM '{services.model_name()}' ({settings.llm_backend}); first start assembles model files")
        services.backend  # noqa: B018  load now so the first chat does not wait
        step(f"LLM ready ({time.perf_counter() - t:.1f}s)")
        step("loading web UI")
        import uvicorn

        from api.server import create_app

        app = create_app(services)
    except (KBError, LLMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step(f"open http://{settings.host}:{settings.port}  (API docs: /docs)")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
