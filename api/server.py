"""The FastAPI app: API routers, /health, JSON errors everywhere under /v1 and /api, the web UI at "/"."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from starlette.routing import Match, Mount

from api import conversation_routes, kb_routes, legacy_routes, openai_routes, user_routes
from api.errors import APIError, install_error_handlers
from api.legacy_routes import StreamSessions
from api.security import AccessGuard, parse_ui_auth
from services import Services

log = logging.getLogger("api")

VERSION = "1.0.0"
DESCRIPTION = """Offline knowledge-base chat.

* **/v1** — OpenAI-compatible: `GET /v1/models`, `POST /v1/chat/completions` (use `model="kb:<name>"` or
  `knowledge_base` to answer from a knowledge base; the response carries `sources` and `retrieval_query`),
  `POST /v1/embeddings`.
* **/api/kb** — knowledge-base management; uploads run as jobs (`GET /api/jobs/{id}`).
* **/api/conversations** — conversations kept on the server: ask with `POST /api/conversations/{id}/messages`
  (SSE whose first event carries the sources, or JSON with `stream=false`), rate answers with
  `POST /api/messages/{id}/feedback`.
* **/api/chat**, **/api/stream_chat** — ChatGLM api.py protocol and its polling stream.

When the server has user accounts (`python -m kb users add NAME`), `api_keys` or `ui_auth`, every route but
`GET /health` needs a credential: send `Authorization: Bearer <key>` (a user's key, or one of `api_keys`), or HTTP
Basic with the `ui_auth` account. **/api/me**, **/api/me/keys** and **/api/users** manage people and keys.
"""


def create_app(services: Services) -> FastAPI:
    settings = services.settings
    app = FastAPI(title="KB Chat API", version=VERSION, description=DESCRIPTION, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.state.services = services
    app.state.stream_sessions = StreamSessions()
    install_error_handlers(app)

    @app.get("/health", tags=["server"], summary="Liveness; does not load the model")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": services.model_name(), "knowledge_bases": len(services.kbs.names())}

    _serve_docs(app)
    app.include_router(openai_routes.router)
    app.include_router(kb_routes.router)
    app.include_router(kb_routes.ui_router)
    app.include_router(conversation_routes.router)
    app.include_router(user_routes.router)
    app.include_router(legacy_routes.router)

    # The UI is mounted at "/" and would answer every unmatched path (including a wrong method on an API
    # path) with its own page: keep /v1 and /api answering JSON 404/405 instead.
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    @app.api_route("/v1/{rest:path}", methods=methods, include_in_schema=False)
    @app.api_route("/api/{rest:path}", methods=methods, include_in_schema=False)
    def _no_route(rest: str, request: Request) -> None:
        for route in app.router.routes:
            if route in catch_all or isinstance(route, Mount):
                continue
            if route.matches(request.scope)[0] == Match.PARTIAL:
                raise APIError(405, f"method {request.method} not allowed on {request.url.path}", "method_not_allowed")
        raise APIError(404, f"no route {request.method} {request.url.path}", "not_found")

    catch_all = app.router.routes[-2:]
    _mount_ui(app, services)

    # Added last = outermost: CORS must also decorate the guard's 401/413 answers.
    app.add_middleware(AccessGuard, settings=settings, gradio_app=gradio_app(app), users=services.users)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    return app


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from a packaged copy: FastAPI's default loads it from a CDN, which an offline machine
    cannot reach and the Content-Security-Policy forbids."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = str(files("fastapi_offline") / "static")  # only its static copy of Swagger UI is used
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")


def _mount_ui(app: FastAPI, services: Services) -> None:
    try:
        from ui import web
    except ImportError as e:
        if getattr(e, "name", None) not in ("ui.web", "ui"):
            raise  # ui.web exists but is broken: fail loudly
        log.warning("web UI (ui/web.py) not available; serving the API only")
        return
    import gradio as gr

    parse_ui_auth(services.settings.ui_auth)  # reject a malformed ui_auth at startup, not at the first login
    gr.mount_gradio_app(app, web.build_ui(services), path="/", **web.mount_options(services))


def gradio_app(app: FastAPI) -> Any | None:
    """The Gradio app mounted at "/" (its login tokens decide who has a UI session), or None."""
    for route in app.router.routes:
        if isinstance(route, Mount) and hasattr(route.app, "tokens"):
            return route.app
    return None
