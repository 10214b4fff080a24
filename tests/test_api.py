"""The HTTP API end to end: a real uvicorn server, the real `openai` client, real files and models."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import DOCUMENTS, LiveServer, make_settings

FACT_FILE = "zorblat_facts.md"
FACT_TEXT = """# Kepler Station engineering notes

## The Zorblat reactor

The Zorblat reactor on Kepler Station runs on purple quartz crystals.
It was commissioned in 2091 by the engineer Mirela Vasquez, and its output is 7.3 gigawatts.

## Unrelated maintenance log

The greenhouse pumps on deck four are cleaned every Tuesday.
"""
ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__大模型技术栈-实战与应用.md"
PDF = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__langchain.pdf"
KB = "docs"


def assert_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """Every error is JSON {"error": {"message", "type", "code"}} and never shows a traceback."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code"}, body
    assert body["error"]["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body["error"]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    seen_progress = []
    while time.time() < deadline:
        r = client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        seen_progress.append(job["progress"])
        if job["status"] not in ("queued", "running"):
            assert all(0.0 <= p <= 1.0 for p in seen_progress)
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("api") / "data", max_tokens=32)
    with LiveServer(settings) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def kb_upload(server: LiveServer, http: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """KB 'docs' created over HTTP with a Chinese .md, an English PDF, our fact file, a broken PDF and a
    traversal-named file, uploaded in one multipart request; returns the finished job."""
    d = tmp_path_factory.mktemp("uploads")
    (d / FACT_FILE).write_text(FACT_TEXT, encoding="utf-8")
    r = http.post("/api/kb", json={"name": KB, "search_mode": "hybrid"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == KB
    files = [
        ("files", (ZH_MD.name, ZH_MD.read_bytes(), "text/markdown")),
        ("files", (PDF.name, PDF.read_bytes(), "application/pdf")),
        ("files", (FACT_FILE, (d / FACT_FILE).read_bytes(), "text/markdown")),
        ("files", ("broken.pdf", b"%PDF-1.7 this is not really a pdf", "application/pdf")),
        ("files", ("../../evil.md", b"# Evil\n\nThis file tried to escape the knowledge base folder.\n", "text/plain")),
    ]
    r = http.post(f"/api/kb/{KB}/files", files=files)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["kind"] == "ingest" and job["kb"] == KB and job["id"]
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    done = wait_job(http, job["id"])
    assert done["status"] == "done", done
    return done


# --- server basics -----------------------------------------------------------------------------
def test_health_docs_and_openapi(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": "smollm2-135m", "knowledge_bases": r.json()["knowledge_bases"]}
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    for p in ("/v1/models", "/v1/chat/completions", "/v1/embeddings", "/api/kb", "/api/kb/{name}/files",
              "/api/jobs/{job_id}", "/api/chat", "/api/stream_chat", "/health"):
        assert p in paths, p


def test_unknown_routes_and_methods_are_json(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nope"), 404)
    assert_error(http.get("/api/nope/deeper"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)
    assert_error(http.put("/api/kb"), 405)
    assert_error(http.get("/api/jobs/doesnotexist"), 404)


# --- knowledge bases over plain HTTP -----------------------------------------------------------
def test_upload_results_per_file(kb_upload: dict[str, Any]) -> None:
    results = {r["name"]: r for r in kb_upload["result"]}
    assert set(results) == {ZH_MD.name, PDF.name, FACT_FILE, "broken.pdf", "evil.md"}
    for name in (ZH_MD.name, PDF.name, FACT_FILE, "evil.md"):
        assert results[name]["status"] == "indexed", results[name]
        assert results[name]["chunks"] > 0
    assert results[PDF.name]["pages"] == 8
    assert results["broken.pdf"]["status"] == "failed"
    assert results["broken.pdf"]["error"]  # a short reason, e.g. "not a PDF"
    assert "Traceback" not in results["broken.pdf"]["error"]
    assert "upload-" not in results["broken.pdf"]["error"]  # no server temp path in a user-facing reason


def test_list_files_and_kbs(server: LiveServer, http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    files = {f["name"]: f for f in http.get(f"/api/kb/{KB}/files").json()["files"]}
    assert files[FACT_FILE]["status"] == "indexed" and files[FACT_FILE]["chunks"] >= 1
    assert files[PDF.name]["chunks"] > 5
    assert files["broken.pdf"]["status"] == "failed" and files["broken.pdf"]["error"]
    assert "upload-" not in files["broken.pdf"]["error"]
    kbs = {k["name"]: k for k in http.get("/api/kb").json()["knowledge_bases"]}
    assert kbs[KB]["files"] == 4 and kbs[KB]["failed"] == 1
    assert kbs[KB]["chunks"] == sum(f["chunks"] for f in files.values())
    assert http.get(f"/api/kb/{KB}").json()["name"] == KB


def test_traversal_name_is_sanitised(server: LiveServer, http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    data_dir = server.services.settings.data_dir
    names = [f["name"] for f in http.get(f"/api/kb/{KB}/files").json()["files"]]
    assert "evil.md" in names and not any("/" in n or ".." in n for n in names)
    # Nothing escaped: no evil.md next to or above the data dir, stored sources live inside the KB.
    for d in (data_dir, data_dir.parent, data_dir.parent.parent):
        assert not (d / "evil.md").exists()
    # The bytes are kept in the database, by sha256, exactly as uploaded.
    files = {f["name"]: f for f in http.get(f"/api/kb/{KB}/files").json()["files"]}
    evil = b"# Evil\n\nThis file tried to escape the knowledge base folder.\n"
    assert server.services.kbs.read_blob(files["evil.md"]["sha256"]) == evil
    # Temp uploads are deleted once the job is over.
    assert not list(server.services.settings.tmp_dir.glob("upload-*"))


def test_search(http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    r = http.post(f"/api/kb/{KB}/search", json={"query": "What does the Zorblat reactor run on?", "top_k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and hits[0]["file"] == FACT_FILE
    assert "purple quartz" in hits[0]["text"]
    assert 0.0 <= hits[0]["score"] <= 1.0 and set(hits[0]) >= {"file", "page", "score", "text", "heading"}
    r = http.post(f"/api/kb/{KB}/search", json={"query": "Zorblat reactor", "mode": "keyword", "threshold": 0.0})
    assert r.json()["mode"] == "keyword" and r.json()["hits"][0]["file"] == FACT_FILE
    assert_error(http.post(f"/api/kb/{KB}/search", json={"query": "x", "top_k": 0}), 422)
    assert_error(http.post(f"/api/kb/{KB}/search", json={"query": "x", "mode": "fuzzy"}), 422)
    assert_error(http.post("/api/kb/missing/search", json={"query": "x"}), 404)


def test_set_search_mode(http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    r = http.patch(f"/api/kb/{KB}", json={"search_mode": "dense"})
    assert r.status_code == 200 and r.json()["search_mode"] == "dense"
    assert http.get(f"/api/kb/{KB}").json()["search_mode"] == "dense"
    assert http.patch(f"/api/kb/{KB}", json={"search_mode": "hybrid"}).json()["search_mode"] == "hybrid"
    assert_error(http.patch(f"/api/kb/{KB}", json={"search_mode": "magic"}), 422)
    r = http.patch(f"/api/kb/{KB}", json={"prompt": "Address the reader as 'you'."})
    assert r.status_code == 200 and r.json()["prompt"] == "Address the reader as 'you'."
    assert r.json()["search_mode"] == "hybrid"  # a PATCH changes only what it names
    assert_error(http.patch(f"/api/kb/{KB}", json={"prompt": "x" * 4001}), 422)
    assert http.patch(f"/api/kb/{KB}", json={"prompt": None}).json()["prompt"] == ""


@pytest.mark.parametrize("name", ["../etc", "bad/name", "..", "-leading", "x" * 80, "a*b"])
def test_bad_kb_names(http: httpx.Client, name: str) -> None:
    err = assert_error(http.post("/api/kb", json={"name": name}), 400)
    assert "invalid knowledge base name" in err["message"]


def test_create_conflict_and_unknown_kb(http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    assert assert_error(http.post("/api/kb", json={"name": KB}), 409)["type"] == "conflict_error"
    assert_error(http.get("/api/kb/nosuchkb"), 404)
    assert_error(http.get("/api/kb/bad%2A%2Aname"), 400)
    assert_error(http.post("/api/kb", json={"nam": KB}), 422)
    assert_error(http.post("/api/kb", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(http.post("/api/kb", json={"name": "zz-emb", "embedding_model": "no-such-model"}), 400)


def test_second_kb_wait_upload_delete_file_rebuild_delete(http: httpx.Client, tmp_path: Path) -> None:
    name = "scratch kb"
    assert http.post("/api/kb", json={"name": name}).status_code == 201
    one, two = tmp_path / "one.md", tmp_path / "two.txt"
    one.write_text("# One\n\nThe first scratch file mentions walruses.\n", encoding="utf-8")
    two.write_text("The second scratch file mentions narwhals and icebergs.\n", encoding="utf-8")
    files = [("files", (p.name, p.read_bytes())) for p in (one, two)]
    r = http.post(f"/api/kb/{name}/files", params={"wait": "true"}, files=files)
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["indexed", "indexed"]
    assert r.json()["job"]["status"] == "done"
    # The same file again is a duplicate, not a second copy.
    r = http.post(f"/api/kb/{name}/files", params={"wait": "true"}, files=files[:1])
    assert r.json()["results"][0]["status"] == "duplicate"

    r = http.delete(f"/api/kb/{name}/files/one.md")
    assert r.status_code == 200 and r.json()["removed"][0]["name"] == "one.md"
    assert [f["name"] for f in http.get(f"/api/kb/{name}/files").json()["files"]] == ["two.txt"]
    assert_error(http.delete(f"/api/kb/{name}/files/one.md"), 404)

    r = http.post(f"/api/kb/{name}/rebuild")
    assert r.status_code == 202
    job = wait_job(http, r.json()["job"]["id"])
    assert job["status"] == "done" and job["result"][0]["name"] == "two.txt"

    assert_error(http.post(f"/api/kb/{name}/files", files=[]), 415)  # no multipart body at all
    assert_error(http.post(f"/api/kb/{name}/files", files={"other": ("x.txt", b"x")}), 400)
    assert http.delete(f"/api/kb/{name}").json() == {"deleted": name}
    assert_error(http.get(f"/api/kb/{name}"), 404)
    assert_error(http.delete(f"/api/kb/{name}"), 404)


# --- OpenAI-compatible -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_models_lists_llm_and_kb(oai: openai.OpenAI, kb_upload: dict[str, Any]) -> None:
    ids = [m.id for m in oai.models.list().data]
    assert ids[0] == "smollm2-135m"
    assert f"kb:{KB}" in ids
    assert oai.models.retrieve(f"kb:{KB}").id == f"kb:{KB}"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("kb:missing")


def test_plain_chat_non_streaming(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model="smollm2-135m", max_tokens=16, temperature=0,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi, my name is Ada."},
                  {"role": "assistant", "content": "Hello Ada!"},
                  {"role": "user", "content": "What is the capital of France?"}],
    )
    assert r.object == "chat.completion" and r.model == "smollm2-135m"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.model_extra["sources"] == []


def test_plain_chat_streaming(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="anything-else", max_tokens=12, temperature=0, stream=True, stop=["\n\n\n"],
        messages=[{"role": "user", "content": "Count from one to five."}],
    )
    chunks = list(stream)
    assert len(chunks) >= 3  # role chunk, content, final chunk
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["sources"] == []


def test_kb_chat_non_streaming(oai: openai.OpenAI, kb_upload: dict[str, Any]) -> None:
    r = oai.chat.completions.create(
        model=f"kb:{KB}", max_tokens=32, temperature=0,
        messages=[{"role": "user", "content": "What does the Zorblat reactor on Kepler Station run on?"}],
        extra_body={"top_k": 2},
    )
    assert r.model == f"kb:{KB}"
    assert r.choices[0].message.content.strip()
    sources = r.model_extra["sources"]
    assert 1 <= len(sources) <= 2
    assert sources[0]["file"] == FACT_FILE and "purple quartz" in sources[0]["text"]
    assert set(sources[0]) == {"kb", "file", "file_id", "page", "score", "text", "heading", "chunk_id"}
    assert "Zorblat" in r.model_extra["retrieval_query"]


def test_kb_chat_streaming_via_knowledge_base_field(oai: openai.OpenAI, kb_upload: dict[str, Any]) -> None:
    stream = oai.chat.completions.create(
        model="smollm2-135m", max_tokens=16, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Who commissioned the Zorblat reactor?"}],
        extra_body={"knowledge_base": KB, "search_mode": "dense", "score_threshold": 0.1},
    )
    chunks = list(stream)
    final = chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.model_extra["sources"][0]["file"] == FACT_FILE
    assert final.model_extra["retrieval_query"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_chat_errors(server: LiveServer, oai: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="kb:missing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):  # also when streaming: the status comes before the stream
        oai.chat.completions.create(model="kb:missing", stream=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "no question"}])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", temperature=5, messages=[{"role": "user", "content": "hi"}])
    url = "/v1/chat/completions"
    assert_error(http.post(url, json={"model": "m", "messages": []}), 400)
    assert_error(http.post(url, json={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}), 400)
    assert_error(http.post(url, json={"model": "kb:../x", "messages": [{"role": "user", "content": "x"}]}), 400)
    assert_error(http.post(url, content=b"[", headers={"content-type": "application/json"}), 400)


def test_streaming_disconnect_cancels_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the SSE connection mid-answer must set the cancel Event and stop the generation early."""
    with LiveServer(make_settings(tmp_path / "d", max_tokens=400)) as srv:
        chat = srv.services.chat
        seen: dict[str, Any] = {}
        finished = threading.Event()
        original = chat.stream

        def spy(question: str, history: Any, options: Any = None, cancel: threading.Event | None = None):
            seen["cancel"], seen["tokens"] = cancel, 0
            try:
                for ev in original(question, history, options, cancel):
                    seen["tokens"] += ev.type == "token"
                    yield ev
            finally:
                finished.set()

        monkeypatch.setattr(chat, "stream", spy)
        body = {"model": "m", "stream": True, "max_tokens": 400, "temperature": 0.8,
                "messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]}
        with httpx.Client(base_url=srv.url, timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    got += 1
                    if got >= 4:
                        break  # leaving the block closes the connection
        assert finished.wait(15), "generation kept running after the client left"
        assert seen["cancel"] is not None and seen["cancel"].is_set()
        assert seen["tokens"] < 300


def test_embeddings(server: LiveServer, oai: openai.OpenAI, http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    r = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "你好，世界", ""])
    assert [d.index for d in r.data] == [0, 1, 2]
    m = np.array([d.embedding for d in r.data])
    default = server.services.kbs.embedder()
    assert m.shape == (3, default.dim)
    # Exactly the vectors the KB stores.
    assert np.allclose(m, default.encode_documents(["hello world", "你好，世界", ""]), atol=1e-4)
    assert r.model == server.services.settings.embedding_model and r.usage.prompt_tokens > 0
    # Named packaged models work too.
    small = oai.embeddings.create(model="minilm", input="hello world")
    assert len(small.data[0].embedding) == 384 and small.model == "minilm"
    # One string, base64 encoding, the KB's own model; same vector as above.
    b = http.post("/v1/embeddings", json={"model": f"kb:{KB}", "input": "hello world", "encoding_format": "base64"})
    assert b.status_code == 200, b.text
    v = np.frombuffer(base64.b64decode(b.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(v, m[0], atol=1e-5)
    assert_error(http.post("/v1/embeddings", json={"input": []}), 400)
    assert_error(http.post("/v1/embeddings", json={"input": [1, 2, 3]}), 400)
    assert_error(http.post("/v1/embeddings", json={"input": "x", "dimensions": 7}), 400)


# --- ChatGLM migration routes ------------------------------------------------------------------
def test_legacy_chat(http: httpx.Client, kb_upload: dict[str, Any]) -> None:
    body = {"prompt": "What is two plus two?", "history": [["Hello", "Hi! How can I help?"]],
            "max_length": 16, "top_p": 0.7, "temperature": 0.1}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == 200 and isinstance(out["response"], str) and out["response"].strip()
    assert out["history"] == [["Hello", "Hi! How can I help?"], [body["prompt"], out["response"]]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out["time"])
    # With a knowledge base the sources come along.
    r = http.post("/api/chat", json={"prompt": "What does the Zorblat reactor run on?", "knowledge_base": KB,
                                     "max_length": 16})
    assert r.status_code == 200 and r.json()["sources"][0]["file"] == FACT_FILE
    assert_error(http.post("/api/chat", json={"prompt": ""}), 422)
    assert_error(http.post("/api/chat", json={"prompt": "x", "history": [["only one"]]}), 422)
    assert_error(http.post("/api/chat", json={"prompt": "x", "knowledge_base": "missing"}), 404)


def test_polling_stream_until_stop(http: httpx.Client) -> None:
    body = {"prompt": "Tell me about the sea.", "history": [], "max_length": 24, "temperature": 0.5}
    replies = []
    deadline = time.time() + 120
    while time.time() < deadline:
        r = http.post("/api/stream_chat", json=body)
        assert r.status_code == 200, r.text
        replies.append(r.json())
        if replies[-1]["stop"]:
            break
        time.sleep(0.1)
    assert replies[-1]["stop"] is True, "stream never finished"
    assert replies[0]["stop"] is False  # the first call only starts the generation
    texts = [x["response"] for x in replies]
    assert texts[-1].strip()
    assert all(texts[-1].startswith(t) for t in texts)  # the answer only grows
    assert replies[-1]["history"] == [[body["prompt"], texts[-1]]]
    # The finished session is gone: the same request starts a new generation.
    again = http.post("/api/stream_chat", json=body).json()
    assert again["stop"] is False
    for _ in range(300):  # let it finish so it does not compete with later tests
        if http.post("/api/stream_chat", json=body).json()["stop"]:
            break
        time.sleep(0.1)


# --- security and limits -----------------------------------------------------------------------
def test_api_keys_enforced(tmp_path: Path) -> None:
    with LiveServer(make_settings(tmp_path / "d", api_keys=["k1"])) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        for method, path in [("GET", "/v1/models"), ("GET", "/api/kb"), ("POST", "/api/chat"),
                             ("POST", "/v1/embeddings"), ("GET", "/api/jobs/x"), ("POST", "/api/kb/x/files"),
                             ("POST", "/v1/chat/completions"), ("POST", "/api/stream_chat"), ("GET", "/v1/unknown")]:
            err = assert_error(c.request(method, path), 401)
            assert err["type"] == "authentication_error"
            assert_error(c.request(method, path, headers={"Authorization": "Bearer wrong"}), 401)
        ok = {"Authorization": "Bearer k1"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/api/kb", headers=ok).json() == {"knowledge_bases": []}
        assert c.get("/health").status_code == 200  # open
        assert_error(c.get("/docs"), 401)  # the API's own description is not public either
        assert_error(c.get("/openapi.json"), 401)
        assert c.get("/docs", headers=ok).status_code == 200
        assert "/v1/models" in c.get("/openapi.json", headers=ok).json()["paths"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
        ids = [m.id for m in openai.OpenAI(base_url=srv.url + "/v1", api_key="k1").models.list().data]
        assert ids == ["smollm2-135m"]


def test_upload_size_limit(tmp_path: Path) -> None:
    with LiveServer(make_settings(tmp_path / "d", max_upload_mb=1)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/api/kb", json={"name": "small"}).status_code == 201
        big = b"# big\n" + b"word " * 300_000  # 1.5 MB
        err = assert_error(c.post("/api/kb/small/files", files={"files": ("big.md", big)}), 413)
        assert "1 MB" in err["message"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.md\"\r\n\r\n"
            for _ in range(30):
                yield b"x" * 65536
            yield b"\r\n--xyz--\r\n"

        r = c.post("/api/kb/small/files", content=chunked(),
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert_error(r, 413)
        assert not list(srv.services.settings.tmp_dir.glob("upload-*"))  # partial upload removed
        assert c.get("/api/kb/small/files").json() == {"files": []}
        # Under the limit is fine.
        r = c.post("/api/kb/small/files", params={"wait": "true"}, files={"files": ("ok.md", b"# ok\n\nsmall file\n")})
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "indexed"


def test_cors_only_when_configured(tmp_path: Path, http: httpx.Client) -> None:
    pre = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in http.options("/v1/models", headers=pre).headers
    with LiveServer(make_settings(tmp_path / "d", cors_origins=["http://example.test"], api_keys=["k"])) as srv:
        r = httpx.options(srv.url + "/v1/models", headers=pre)
        assert r.headers.get("access-control-allow-origin") == "http://example.test"
        r = httpx.get(srv.url + "/v1/models", headers={"Origin": "http://example.test"})
        assert r.status_code == 401 and r.headers.get("access-control-allow-origin") == "http://example.test"


def test_unexpected_errors_are_generic_500(server: LiveServer, http: httpx.Client,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(server.services.kbs, "list", boom)
    err = assert_error(http.get("/api/kb"), 500)
    assert "secret" not in json.dumps(err) and err["type"] == "server_error"
