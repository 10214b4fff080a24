"""Bearer-key auth for /v1 and /api, and the request-size limit."""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import APIError, error_body

_bearer = HTTPBearer(auto_error=False, description="One of the server's api_keys (only when api_keys is set)")
PROTECTED_PREFIXES = ("/v1/", "/api/")


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """A router dependency: no-op when no keys are configured, else a valid Bearer key is required."""
    keys: list[str] = request.app.state.services.settings.api_keys
    if not keys:
        return
    given = credentials.credentials if credentials else ""
    # Compare against every key in constant time so timing does not reveal a key prefix.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not ok:
        raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit_mb: int):
        super().__init__(413, f"request body too large: the limit is {limit_mb} MB (max_upload_mb)")


class BodyLimitMiddleware:
    """Refuses /v1 and /api request bodies over ``limit_mb``: at once when Content-Length says so, else while
    the body streams in (chunked uploads), by raising BodyTooLarge from ``receive`` (the route's reader
    fails, temp files are cleaned up by it, and the error handler answers 413)."""

    def __init__(self, app: ASGIApp, limit_mb: int):
        self.app = app
        self.limit_mb = limit_mb
        self.limit = limit_mb * 1024 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False  # the server rejects a malformed header itself
                if too_big:
                    await self._reject(send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit_mb)
            return message

        await self.app(scope, counted, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body(413, BodyTooLarge(self.limit_mb).detail, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
