"""One access policy for every route the process serves (the API, the Gradio UI and its own routes).

``AccessGuard`` is the outermost ASGI layer under CORS. For every HTTP and websocket request it checks, in order:

1. **Host** is one the server answers to (DNS rebinding): loopback names, IP literals of addresses it listens
   on, and ``allowed_hosts``. Anything else: 400.
2. **Cross-site writes**: a state-changing request (not GET/HEAD/OPTIONS) or a websocket whose ``Origin`` is
   neither this server nor a ``cors_origins`` entry: 403. Multipart uploads are CORS "simple requests" that a
   foreign page can send without a preflight; this is what stops them.
3. **Credentials**, when any is configured (``api_keys`` or ``ui_auth``): every route except ``GET /health``
   and the login page (with the static assets it needs) requires one of
   - ``Authorization: Bearer <api key>``, on every route;
   - ``Authorization: Basic <ui_auth user:password>``, on every route;
   - the Gradio session cookie of a user logged in through the UI, on the UI's own routes only (so a cookie
     never authorises /v1 or /api, and cross-site cookie tricks cannot reach the API).
   Anything else: 401. A request authenticated by a header is let into Gradio as the service user, so
   ``gradio_client`` and scripts work with the same key.
4. **Body size**: more than ``max_upload_mb`` is refused with 413, at once from Content-Length or while it
   streams in, on every route (Gradio's upload route included).

Responses get a Content-Security-Policy that forbids loading scripts, images, frames and connections from
other origins, so text a model writes cannot make the browser fetch a URL.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from kb.types import KBNotFound
from kb.users import LOCAL_ADMIN, Principal, Users

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
API_PREFIXES = ("/v1/", "/api/")
SERVICE_USER = LOCAL_ADMIN  # the Gradio user name of requests authenticated by a settings key or Basic credentials

# Without a credential, only these answer when credentials are configured: liveness and the login page.
# The page at "/" renders Gradio's login form (Gradio serves it a config with no components when nobody is
# logged in); the asset routes serve the app's own static JS/CSS/fonts, which hold no user data.
PUBLIC_EXACT = frozenset({("GET", "/health"), ("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"),
                          ("GET", "/theme.css"), ("GET", "/favicon.ico")})
PUBLIC_PREFIXES = (("GET", "/assets/"), ("GET", "/static/"))

# Gradio routes this app never uses and that reach outside the machine or change the app: closed to everyone.
CLOSED_PREFIXES = ("/gradio_api/proxy=", "/gradio_api/run-history/", "/gradio_api/vibe", "/gradio_api/undo-vibe",
                   "/gradio_api/dev/", "/monitoring")

CSP = "; ".join([
    "default-src 'self'",
    # Gradio's page boots from inline scripts and builds styles at run time; nothing from another origin.
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "frame-src 'self'",
    "frame-ancestors 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
])
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "SAMEORIGIN",
}


def parse_ui_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("ui_auth must look like 'user:password'")
    return user, password


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call the app: the ``api_keys`` / ``ui_auth`` settings (they act as the local admin) and the user
    accounts in the database (their passwords and keys). Nothing configured = open (loopback use), everyone
    acting as the local admin. Whether logins are required is decided at start-up (``accounts``), so the API
    and the UI's login page always agree; keys and passwords themselves are checked on every request."""

    api_keys: tuple[str, ...] = ()
    ui_account: tuple[str, str] | None = None
    users: Users | None = None
    accounts: bool = False

    @classmethod
    def from_settings(cls, settings: Any, users: Users | None = None) -> AccessPolicy:
        return cls(tuple(k for k in settings.api_keys if k), parse_ui_auth(settings.ui_auth), users,
                   users is not None and users.has_accounts())

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.ui_account or self.accounts)

    def _admin(self) -> Principal | None:
        return self.users.local_admin() if self.users is not None else None

    def principal(self, authorization: str | None) -> Principal | None:
        """Who an ``Authorization`` header authenticates (None: nobody). A settings credential is the local
        admin; a user's key is that user."""
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value and self.users is not None:
            user = self.users.by_key(value)
            if user is not None:
                return user
        return self._admin() if self.header_ok(authorization) else None

    def ui_login(self, user: str, password: str) -> bool:
        """The UI login form. A user account logs in with its password or one of its keys; any other name logs
        in with the ``ui_auth`` account or a settings key (and acts as the local admin)."""
        if self.users is not None:
            try:
                account = self.users.get(user)
            except KBNotFound:
                account = None
            if account is not None:
                if self.users.by_password(user, password) is not None:
                    return True
                by_key = self.users.by_key(password)
                if by_key is not None and by_key.id == account.id:
                    return True
                if account.name != LOCAL_ADMIN:  # an account's name never logs in with settings credentials
                    return False
        return self.login_ok(user, password)

    def ui_principal(self, username: str | None) -> Principal | None:
        """Who a UI session (or a Gradio request) acts for, from the name it logged in with."""
        return self.users.login_name(username) if self.users is not None else None

    def key_ok(self, given: str) -> bool:
        ok = False
        for key in self.api_keys:  # every key is compared, in constant time, so timing reveals nothing
            ok |= _equal(given, key)
        return ok

    def account_ok(self, user: str, password: str) -> bool:
        if self.ui_account is None:
            return False
        return _equal(user, self.ui_account[0]) & _equal(password, self.ui_account[1])

    def login_ok(self, user: str, password: str) -> bool:
        """The UI login: the ui_auth account, or any user name with an API key as the password."""
        return self.account_ok(user, password) | self.key_ok(password)

    def header_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            return self.key_ok(value)
        if scheme == "basic" and value:
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return bool(sep) and self.account_ok(user, password)
        return False


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC_EXACT or any(method == m and path.startswith(p) for m, p in PUBLIC_PREFIXES)


def is_closed(path: str) -> bool:
    return path.startswith(CLOSED_PREFIXES)


def host_name(host_header: str) -> str:
    """'example.com:7860' -> 'example.com'; '[::1]:7860' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class HostPolicy:
    """The Host names the server answers to. IP literals cannot be rebound by an attacker's DNS, so those of
    the bind address (any address when bound to a wildcard) pass; names must be loopback or listed."""

    def __init__(self, bind_host: str, allowed_hosts: list[str]):
        self.any = "*" in allowed_hosts
        self.names = {h.lower() for h in allowed_hosts} | {bind_host.lower()}  # loopback: is_loopback()
        try:
            bind_ip = ipaddress.ip_address(bind_host)
        except ValueError:
            bind_ip = None
        self.any_ip = bind_ip is not None and bind_ip.is_unspecified

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header:
            return False
        host = host_name(host_header)
        if host in self.names or is_loopback(host):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return self.any_ip


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit_mb: int):
        super().__init__(413, f"request body too large: the limit is {limit_mb} MB (max_upload_mb)")


class AccessGuard:
    """The ASGI layer that applies the policy above to every request; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Any, gradio_app: Any | None, users: Users | None = None):
        self.app = app
        self.policy = AccessPolicy.from_settings(settings, users)
        self.hosts = HostPolicy(settings.host, list(settings.allowed_hosts))
        self.cors_origins = {o.rstrip("/") for o in settings.cors_origins}
        self.limit_mb = settings.max_upload_mb
        self.limit = settings.max_upload_mb * 1024 * 1024
        self.gradio = gradio_app  # its login tokens say who has a UI session
        self._service_tokens: dict[str, str] = {}  # user name -> Gradio session token of key-authenticated calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        path: str = scope["path"]
        host = headers.get("host")
        if not self.hosts.allows(host):
            await self._reject(scope, send, 400, f"host '{host}' is not served here: add it to allowed_hosts",
                               "host_not_allowed")
            return
        if method not in SAFE_METHODS and not self._same_site(scope, headers):
            await self._reject(scope, send, 403, "cross-site request refused: its Origin is not this server "
                               "or one of cors_origins", "cross_site_request")
            return
        if is_closed(path):
            await self._reject(scope, send, 404, f"no route {method} {path}", "not_found")
            return
        who = self.policy.ui_principal(None)  # open install, or a public route: the local admin
        if self.policy.enabled and not is_public(method, path):
            who = self.policy.principal(headers.get("authorization"))
            if who is not None:
                scope = self._as_user(scope, who)
            else:
                session_user = None if path.startswith(API_PREFIXES) else self._ui_session(headers)
                if session_user is None:
                    await self._reject(scope, send, 401, "authentication required: send 'Authorization: Bearer "
                                       "<key>' (or log in to the web UI)", "invalid_api_key",
                                       {"WWW-Authenticate": "Bearer"})
                    return
                who = self.policy.ui_principal(session_user)
        # Routes read it as request.state.user (see request_user).
        scope = dict(scope, state={**scope.get("state", {}), "user": who})
        if scope["type"] == "http" and self._declared_too_large(headers):
            await self._reject(scope, send, 413, BodyTooLarge(self.limit_mb).detail, "request_too_large")
            return
        await self.app(scope, self._counted(receive), self._with_headers(send))

    # --- checks ---------------------------------------------------------------------------------------
    def _same_site(self, scope: Scope, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None:
            # Not a browser, or an old one; browsers that send Sec-Fetch-Site say where the request came from.
            return headers.get("sec-fetch-site") not in ("cross-site", "same-site")
        origin = origin.rstrip("/")
        if origin in self.cors_origins:
            return True
        # Host and port must match; the scheme may not (a TLS-terminating proxy forwards https as http).
        return origin.partition("://")[2].lower() == headers.get("host", "").lower()

    def _ui_session(self, headers: Headers) -> str | None:
        """The user name of a logged-in UI session (None: no session)."""
        gradio = self.gradio
        if gradio is None:
            return None
        cookies = _cookies(headers.get("cookie", ""))
        for name in (f"access-token-{gradio.cookie_id}", f"access-token-unsecure-{gradio.cookie_id}"):
            token = cookies.get(name)
            if token and token in gradio.tokens:
                return str(gradio.tokens[token])
        return None

    def _as_user(self, scope: Scope, who: Principal | None) -> Scope:
        """Let a key-authenticated request into Gradio's own login checks as the user the key belongs to."""
        gradio = self.gradio
        if gradio is None or scope["path"].startswith(API_PREFIXES):
            return scope
        name = who.name if who is not None else SERVICE_USER
        token = self._service_tokens.get(name)
        if token is None or token not in gradio.tokens:
            token = self._service_tokens[name] = secrets.token_urlsafe(32)
            gradio.tokens[token] = name
        cookie = f"access-token-unsecure-{gradio.cookie_id}={token}".encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"cookie"] + [(b"cookie", cookie)]
        return dict(scope, headers=headers)

    def _declared_too_large(self, headers: Headers) -> bool:
        try:
            return int(headers.get("content-length", "0")) > self.limit
        except ValueError:
            return False  # the server rejects a malformed header itself

    # --- plumbing -------------------------------------------------------------------------------------
    def _counted(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # The route's reader fails, cleans up its temp files, and the error handler answers 413.
                    raise BodyTooLarge(self.limit_mb)
            return message

        return counted

    def _with_headers(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)

        return wrapped

    async def _reject(self, scope: Scope, send: Send, status: int, message: str, code: str,
                      extra: dict[str, str] | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps(error_body(status, message, code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in {**SECURITY_HEADERS, **(extra or {})}.items()]
        if status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out


def request_user(request: Any) -> Principal:
    """Who an API request acts for (set by AccessGuard; the local admin in an open install)."""
    who = getattr(request.state, "user", None)
    if who is None:
        raise RuntimeError("request without a user: AccessGuard is not installed")
    return who
