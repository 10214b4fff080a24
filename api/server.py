"""The FastAPI app: API routers, /health, JSON errors everywhere under /v1 and /api, the web UI at "/"."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Match, Mount

from api import kb_routes, legacy_routes, openai_routes
from api.errors import APIError, install_error_handlers
from api.legacy_routes import StreamSessions
from api.security import BodyLimitMiddleware, require_api_key
from services import Services

log = logging.getLogger("api")

VERSION = "1.0.0"
DESCRIPTION = """Offline knowledge-base chat.

* **/v1** — OpenAI-compatible: `GET /v1/models`, `POST /v1/chat/completions` (use `model="kb:<name>"` or
  `knowledge_base` to answer from a knowledge base; the response carries `sources` and `retrieval_query`),
  `POST /v1/embeddings`.
* **/api/kb** — knowledge-base management; uploads run as jobs (`GET /api/jobs/{id}`).
* **/api/chat**, **/api/stream_chat** — ChatGLM api.py protocol and its polling stream.

When the server has `api_keys`, send `Authorization: Bearer <key>` to every /v1 and /api route.
"""


def _ui_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("ui_auth must look like 'user:password'")
    return user, password


def create_app(services: Services) -> FastAPI:
    settings = services.settings
    app = FastAPI(title="KB Chat API", version=VERSION, description=DESCRIPTION, docs_url="/docs",
                  redoc_url=None, openapi_url="/openapi.json")
    app.state.services = services
    app.state.stream_sessions = StreamSessions()
    install_error_handlers(app)

    @app.get("/health", tags=["server"], summary="Liveness; does not load the model")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": services.model_name(), "knowledge_bases": len(services.kbs.names())}

    app.include_router(openai_routes.router)
    app.include_router(kb_routes.router)
    app.include_router(legacy_routes.router)

    # The UI is mounted at "/" and would answer every unmatched path (including a wrong method on an API
    # path) with its own page: keep /v1 and /api answering JSON 404/405 instead.
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    guard = [Depends(require_api_key)]  # unknown paths answer 401 too, so route names are not probeable

    @app.api_route("/v1/{rest:path}", methods=methods, include_in_schema=False, dependencies=guard)
    @app.api_route("/api/{rest:path}", methods=methods, include_in_schema=False, dependencies=guard)
    def _no_route(rest: str, request: Request) -> None:
        for route in app.router.routes:
            if route in catch_all or isinstance(route, Mount):
                continue
            if route.matches(request.scope)[0] == Match.PARTIAL:
                raise APIError(405, f"method {request.method} not allowed on {request.url.path}", "method_not_allowed")
        raise APIError(404, f"no route {request.method} {request.url.path}", "not_found")

    catch_all = app.router.routes[-2:]
    _mount_ui(app, services)

    # Outermost first: CORS must also decorate 401/413 answers, so it wraps the body limit.
    app.add_middleware(BodyLimitMiddleware, limit_mb=settings.max_upload_mb)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    return app


def _mount_ui(app: FastAPI, services: Services) -> None:
    try:
        from ui import web
    except ImportError as e:
        if getattr(e, "name", None) not in ("ui.web", "ui"):
            raise  # ui.web exists but is broken: fail loudly
        log.warning("web UI (ui/web.py) not available; serving the API only")
        return
    import gradio as gr

    settings = services.settings
    # The UI module owns its mount options (theme, i18n, auth, upload size); fall back to the essentials.
    if hasattr(web, "mount_options"):
        opts: dict[str, Any] = web.mount_options(services)
    else:
        opts = {"auth": _ui_auth(settings.ui_auth), "max_file_size": f"{settings.max_upload_mb}mb"}
    _ui_auth(settings.ui_auth)  # reject a malformed ui_auth at startup rather than at the first login
    gr.mount_gradio_app(app, web.build_ui(services), path="/", **opts)
