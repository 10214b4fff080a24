"""One error shape for every API response: ``{"error": {"message", "type", "code"}}`` (OpenAI's shape).

Handlers map domain errors to statuses (KBError -> its status_code, LLMError -> 502/503, validation -> 422, or
400 on /v1 like OpenAI), and anything unexpected to a generic 500 whose traceback only reaches the server log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb.types import KBError
from llm.backends.base import LLMError
from services import Busy

log = logging.getLogger("api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "model_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Raised by routes for a user-facing error with a given status."""

    def __init__(self, status_code: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.headers = headers


class ModelUnavailable(APIError):
    """The LLM could not be loaded (missing/corrupt GGUF, unreachable upstream)."""

    def __init__(self, message: str):
        super().__init__(503, message, "model_unavailable")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else "error"),
                      "code": code}}


def error_response(status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def kb_error_response(e: KBError) -> JSONResponse:
    status = int(getattr(e, "status_code", 400))
    code = {404: "not_found", 409: "conflict"}.get(status, "invalid_request")
    return error_response(status, str(e), code)


def llm_error_response(e: LLMError) -> JSONResponse:
    status = int(getattr(e, "status_code", 502))
    return error_response(status if status in (502, 503, 504) else 502, str(e), "model_error")


def payload_for(e: Exception) -> tuple[int, dict[str, Any]]:
    """Status and body for an error that can no longer become an HTTP status (in-band stream errors)."""
    if isinstance(e, APIError):
        return e.status_code, error_body(e.status_code, e.message, e.code)
    if isinstance(e, Busy):
        return 429, error_body(429, str(e), "server_busy")
    if isinstance(e, KBError):
        r = kb_error_response(e)
    elif isinstance(e, LLMError):
        r = llm_error_response(e)
    else:
        log.error("unexpected error", exc_info=e)
        r = error_response(500, "internal server error (details are in the server log)", "internal_error")
    return r.status_code, json.loads(r.body)


def _validation_message(exc: RequestValidationError) -> str:
    # Only location + message: pydantic's "input" echoes (possibly huge) request data back.
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.code, exc.headers)

    @app.exception_handler(KBError)
    async def _kb_error(request: Request, exc: KBError) -> JSONResponse:
        return kb_error_response(exc)

    @app.exception_handler(LLMError)
    async def _llm_error(request: Request, exc: LLMError) -> JSONResponse:
        log.warning("LLM error on %s: %s", request.url.path, exc)
        return llm_error_response(exc)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error_response(429, str(exc), "server_busy", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers malformed requests with 400; the rest of the API uses FastAPI's usual 422.
        status = 400 if request.url.path.startswith("/v1/") else 422
        return error_response(status, _validation_message(exc), "validation_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (details are in the server log)", "internal_error")
