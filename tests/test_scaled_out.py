"""Two app processes, one deployment: PostgreSQL for the database, Milvus for the index (real servers).

An upload through one process is searchable through the other; jobs are visible from both; writes to one KB
through both at once end consistent; a delete through one is seen by the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import DOCUMENTS, REPO, free_port, make_settings
from kb.service import KnowledgeBaseManager
from kb.types import KBError
from tests.servers import start_milvus, start_postgres, stop
from tests.storage_checks import assert_consistent

ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md"
ZH_MD2 = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__大模型指令对齐训练原理.md"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("engines")
    milvus_uri, milvus = start_milvus(root / "milvus")
    pg_url, pg = start_postgres(root / "pg")
    try:
        yield pg_url, milvus_uri
    finally:
        stop(milvus)
        pg.cleanup()  # type: ignore[attr-defined]


def start_app(data_dir: Path, pg_url: str, milvus_uri: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBCHAT_")}
    env |= {"KBCHAT_DATABASE_URL": pg_url, "KBCHAT_VECTOR_STORE": milvus_uri, "KBCHAT_LLM_MODEL": "smollm2-135m",
            "KBCHAT_JOB_STALE_SECONDS": "5", "PYTHONPATH": str(REPO)}
    log = open(data_dir.with_suffix(".log"), "wb")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data_dir)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"app at {url} did not start: {log.read_text(errors='replace')[-3000:]}")


def wait_job(client: httpx.Client, job_id: str) -> dict:
    deadline = time.time() + 600
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def test_two_app_processes_share_kbs_on_postgres_and_milvus(engines, tmp_path):
    pg_url, milvus_uri = engines
    (a_url, a), (b_url, b) = start_app(tmp_path / "a", pg_url, milvus_uri), start_app(tmp_path / "b", pg_url,
                                                                                      milvus_uri)
    try:
        wait_healthy(a_url, a, tmp_path / "a.log")
        wait_healthy(b_url, b, tmp_path / "b.log")
        with httpx.Client(base_url=a_url, timeout=600) as ca, httpx.Client(base_url=b_url, timeout=600) as cb:
            assert ca.post("/api/kb", json={"name": "shared"}).status_code == 201
            assert [k["name"] for k in cb.get("/api/kb").json()["knowledge_bases"]] == ["shared"]

            with open(ZH_MD, "rb") as f:
                r = ca.post("/api/kb/shared/files?wait=true", files={"files": (ZH_MD.name, f)})
            assert r.status_code == 200, r.text
            assert [x["status"] for x in r.json()["results"]] == ["indexed"]
            hits = cb.post("/api/kb/shared/search", json={"query": "流水线并行", "threshold": 0.0}).json()["hits"]
            assert hits and hits[0]["file"] == ZH_MD.name

            # Both processes write to the same KB at once; each job is visible from the other process.
            with open(ZH_MD2, "rb") as f2, open(ZH_MD, "rb") as f1:
                ja = ca.post("/api/kb/shared/files", files={"files": ("copy/" + ZH_MD.name, f1)}).json()["job"]
                jb = cb.post("/api/kb/shared/files", files={"files": (ZH_MD2.name, f2)}).json()["job"]
            done_a, done_b = wait_job(cb, ja["id"]), wait_job(ca, jb["id"])
            assert (done_a["status"], done_b["status"]) == ("done", "done"), (done_a, done_b)
            assert done_a["result"][0]["status"] == "duplicate"  # same bytes, different path: no re-embedding
            assert done_b["result"][0]["status"] == "indexed"
            hits = ca.post("/api/kb/shared/search", json={"query": "指令对齐", "threshold": 0.0}).json()["hits"]
            assert ZH_MD2.name in {h["file"] for h in hits}

            assert cb.delete(f"/api/kb/shared/files/{ZH_MD2.name}").status_code == 200
            hits = ca.post("/api/kb/shared/search", json={"query": "指令对齐", "top_k": 10,
                                                          "threshold": 0.0}).json()["hits"]
            assert ZH_MD2.name not in {h["file"] for h in hits}
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(30)

    # The database and Milvus agree, seen by a third client of the same deployment.
    mgr = KnowledgeBaseManager(make_settings(tmp_path / "c", database_url=pg_url, vector_store=milvus_uri))
    try:
        assert assert_consistent(mgr, mgr.get("shared")) == {ZH_MD.name: mgr.get("shared").info()["chunks"]}
    finally:
        mgr.close()


def test_export_from_local_import_into_milvus_without_reembedding(engines, tmp_path, monkeypatch):
    _, milvus_uri = engines
    local = KnowledgeBaseManager(make_settings(tmp_path / "laptop"))
    kb = local.create("move", search_mode="keyword", chunk_size=300, chunk_overlap=30)
    kb.ingest([ZH_MD, ZH_MD2])
    expected = [(h.file, h.text) for h in kb.search("指令对齐", top_k=3, threshold=0.0)]
    out = subprocess.run([sys.executable, "-m", "kb", "export", "move", str(tmp_path / "move.zip"),
                          "--data-dir", str(tmp_path / "laptop")], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 files" in out.stdout

    cluster = KnowledgeBaseManager(make_settings(tmp_path / "cluster", vector_store=milvus_uri))
    emb = cluster.embedder()  # the default model the exported KB was made with
    monkeypatch.setattr(emb, "encode_documents", lambda texts: pytest.fail("import re-embedded chunks"))
    try:
        moved = cluster.import_kb(tmp_path / "move.zip")
        info = moved.info()
        assert (info["files"], info["chunks"], info["search_mode"], info["chunk_size"]) == (
            2, kb.info()["chunks"], "keyword", 300)
        assert [(h.file, h.text) for h in moved.search("指令对齐", top_k=3, threshold=0.0)] == expected
        assert_consistent(cluster, moved)
        bad = tmp_path / "bad.zip"
        bad.write_bytes(b"not a zip")
        with pytest.raises(KBError, match="not a knowledge-base export"):
            cluster.import_kb(bad)
    finally:
        cluster.delete("move")  # the shared Milvus keeps nothing of it
        cluster.close()
