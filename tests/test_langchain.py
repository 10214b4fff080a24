"""LangChain over our KBs (kb/langchain.py): real LangChain objects against a real ``python app.py`` process.

One server for the module (its own data dir, an API key, the packaged USE model and the tiny LLM). The test
process reaches the same KBs two ways: remotely through the server's REST search, and in-process on the data
dir (a second process on the same database and index, as the CLI is beside a running app).
"""

from __future__ import annotations

import asyncio
import functools
import json
import operator
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_openai import ChatOpenAI
from langchain_text_splitters import MarkdownHeaderTextSplitter

from conftest import DOCUMENTS, REPO, free_port
from kb.langchain import KBChatOpenAI, KBFileLoader, KnowledgeBaseRetriever, format_documents, open_manager
from kb.loaders.bundle import heading_of, make_bundles, page_of
from kb.types import KBNotFound

KEY = "lc-test-key"
ZH_FILE = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md"
EN_FILE = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__langchain.pdf"
# (question, words the right chunk contains, its file)
ZH_QUERY = ("FSDP 是由哪项技术驱动的？", "ZeroRedundancyOptimizer", ZH_FILE.name)
EN_QUERY = ("Which memory types bound a conversation by number of exchanges or by tokens?",
            "'buffer' type delineates memory bounds", EN_FILE.name)
FAQ_MD = """# 账户
## 重置密码
登录页点击“忘记密码”，输入注册邮箱，系统会发送一封重置邮件，链接三十分钟内有效。
## 注销账户
在设置页选择“注销”，管理员审核后七天内删除全部数据。
# Billing
## Refunds
Refunds are issued to the original card within 14 business days after the return is received.
"""


class AppProcess:
    """``python app.py`` in a child process, as a user starts it."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "app.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KBCHAT_")}
        env |= {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "KBCHAT_API_KEYS": json.dumps([KEY]),
                "KBCHAT_MAX_TOKENS": "24", "KBCHAT_CONDENSE_QUESTION": "false"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(self.port),
                 "--llm-model", "smollm2-135m", "--embedding-model", "use-multilingual"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 900) -> None:  # a busy 2-core machine starts it in minutes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer within {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    proc = AppProcess(tmp_path_factory.mktemp("lc") / "data")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def docs_kb(app: AppProcess) -> str:
    """KB 'docs' with a Chinese markdown file and an English PDF, uploaded through the REST API."""
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=app.url, headers=auth, timeout=600) as c:
        c.post("/api/kb", json={"name": "docs", "embedding_model": "use-multilingual"}).raise_for_status()
        files = [("files", (p.name, p.read_bytes())) for p in (ZH_FILE, EN_FILE)]
        r = c.post("/api/kb/docs/files", params={"wait": "true"}, files=files)
        r.raise_for_status()
        assert [x["status"] for x in r.json()["results"]] == ["indexed", "indexed"], r.json()
    return "docs"


def remote(url: str, kb: str, **kw: object) -> KnowledgeBaseRetriever:
    return KnowledgeBaseRetriever(kb=kb, url=url, api_key=KEY, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("query", [ZH_QUERY, EN_QUERY], ids=["zh", "en"])
def test_retriever_finds_the_right_chunk(app: AppProcess, docs_kb: str, where: str,
                                         query: tuple[str, str, str]) -> None:
    question, words, file = query
    retriever = remote(url=app.url, kb=docs_kb, top_k=3) if where == "remote" else \
        KnowledgeBaseRetriever(kb=docs_kb, data_dir=app.data_dir, top_k=3)
    for docs in (retriever.invoke(question), asyncio.run(retriever.ainvoke(question))):
        assert 1 <= len(docs) <= 3
        best = docs[0]
        assert isinstance(best, Document)
        assert words in best.page_content, [d.page_content[:80] for d in docs]
        meta = best.metadata
        assert meta["kb"] == docs_kb and meta["file"] == file and meta["source"] == file
        assert 0 < meta["score"] <= 1 and isinstance(meta["chunk_id"], int) and best.id == str(meta["chunk_id"])
        assert meta["page"] == (5 if file == EN_FILE.name else None)
        assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)


def test_remote_and_local_agree_with_our_search(app: AppProcess, docs_kb: str) -> None:
    """top_k, threshold and mode mean what they mean in our own search."""
    kb = open_manager(app.data_dir).get(docs_kb)
    question = EN_QUERY[0]
    for mode in ("dense", "keyword", "hybrid"):
        ours = [h.chunk_id for h in kb.search(question, top_k=4, threshold=0.0, mode=mode)]
        for r in (remote(url=app.url, kb=docs_kb, top_k=4, threshold=0.0, mode=mode),
                  KnowledgeBaseRetriever(kb=docs_kb, data_dir=app.data_dir, top_k=4, threshold=0.0, mode=mode)):
            docs = r.invoke(question)
            assert [d.metadata["chunk_id"] for d in docs] == ours, mode
            if mode == "keyword":
                assert all(d.metadata["dense_score"] is None for d in docs)
    best = kb.search(question, top_k=1, threshold=0.0)[0].score
    above = remote(url=app.url, kb=docs_kb, threshold=min(1.0, best + 0.0001)).invoke(question)
    assert above == []  # nothing scores above the best hit
    assert len(remote(url=app.url, kb=docs_kb, top_k=1, threshold=0.0).invoke(question)) == 1


def test_clear_errors(app: AppProcess, docs_kb: str) -> None:
    with pytest.raises(KBNotFound, match="nope"):
        remote(url=app.url, kb="nope").invoke("x")
    with pytest.raises(KBNotFound, match="nope"):
        KnowledgeBaseRetriever(kb="nope", data_dir=app.data_dir).invoke("x")
    with pytest.raises(PermissionError, match="401"):
        KnowledgeBaseRetriever(kb=docs_kb, url=app.url, api_key="wrong").invoke("x")
    with pytest.raises(PermissionError, match="401"):
        asyncio.run(KnowledgeBaseRetriever(kb=docs_kb, url=app.url).ainvoke("x"))
    with pytest.raises(ValueError, match="either url"):
        KnowledgeBaseRetriever(kb=docs_kb, url=app.url, data_dir=app.data_dir)


def test_chat_openai_streams_kb_answer_with_sources(app: AppProcess, docs_kb: str) -> None:
    # A generous chunk timeout: on a busy 2-core machine the first token can take minutes.
    llm = KBChatOpenAI(base_url=app.url + "/v1", api_key=KEY, model=f"kb:{docs_kb}", max_tokens=16,
                       stream_chunk_timeout=900, timeout=900)
    assert isinstance(llm, ChatOpenAI)
    chunks = list(llm.stream(ZH_QUERY[0]))
    assert len(chunks) > 2 and "".join(c.text for c in chunks).strip()
    # The sources come with the finishing chunk (after every token); adding the chunks up keeps them.
    (last,) = [c for c in chunks if "sources" in c.response_metadata]
    assert last.response_metadata["finish_reason"] in ("stop", "length") and not last.text
    full = functools.reduce(operator.add, chunks)
    sources = full.response_metadata["sources"]
    assert any(ZH_QUERY[1] in s["text"] and s["file"] == ZH_FILE.name for s in sources), sources
    assert full.response_metadata["retrieval_query"] == ZH_QUERY[0]

    async def astream() -> list[AIMessageChunk]:
        return [c async for c in llm.astream(EN_QUERY[0])]

    full = functools.reduce(operator.add, asyncio.run(astream()))
    assert full.text.strip() and any(s["file"] == EN_FILE.name for s in full.response_metadata["sources"])
    # Not streaming: the same on the message.
    message = llm.invoke(EN_QUERY[0])
    assert any(s["file"] == EN_FILE.name for s in message.response_metadata["sources"])


def test_lcel_chain_retriever_prompt_chat_openai(app: AppProcess, docs_kb: str) -> None:
    """The README's chain: our retriever -> prompt -> plain ChatOpenAI on our /v1 (the app's LLM)."""
    retriever = KnowledgeBaseRetriever(kb=docs_kb, url=app.url, api_key=KEY, top_k=3)
    prompt = ChatPromptTemplate.from_messages([
        ("human", "Answer from these excerpts, citing [file p.page]:\n\n{context}\n\nQuestion: {question}")])
    llm = ChatOpenAI(base_url=app.url + "/v1", api_key=KEY, model="local", max_tokens=16, stream_chunk_timeout=900)
    chain = {"context": retriever | format_documents, "question": RunnablePassthrough()} | prompt | llm \
        | StrOutputParser()
    pieces = list(chain.stream(EN_QUERY[0]))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert EN_QUERY[1] in format_documents(retriever.invoke(EN_QUERY[0]))


def test_langchain_documents_land_in_a_kb(app: AppProcess) -> None:
    """Documents from LangChain loaders/splitters -> our KB, through the ingest job, deduplicated, searchable."""
    pdf_docs = KBFileLoader(EN_FILE).load()
    assert pdf_docs[0].metadata["source"] == str(EN_FILE) and pdf_docs[0].metadata["page"] == 1
    assert {d.metadata["page"] for d in pdf_docs} == set(range(1, 9))
    faq = MarkdownHeaderTextSplitter([("#", "Header 1"), ("##", "Header 2")]).split_text(FAQ_MD)
    for d in faq:
        d.metadata["source"] = "https://help.example.com/faq.md"

    open_manager(app.data_dir).create("lc", embedding_model="use-multilingual")  # the server's model
    local = KnowledgeBaseRetriever(kb="lc", data_dir=app.data_dir, top_k=2)
    results = local.add_documents(pdf_docs)  # the job runs in this process
    assert [(r.name, r.status) for r in results] == [(EN_FILE.name + ".kbdocs", "indexed")]
    assert results[0].pages == 8 and results[0].chunks > 8

    web = remote(url=app.url, kb="lc", top_k=2)
    results = web.add_documents(faq)  # uploaded as a bundle, indexed by the server's job
    assert [(r.name, r.status) for r in results] == [("help.example.com/faq.md.kbdocs", "indexed")]
    again = web.add_documents(faq) + local.add_documents(pdf_docs)
    assert [r.status for r in again] == ["duplicate", "duplicate"]  # same content: no second embedding

    jobs = httpx.get(app.url + "/api/jobs", params={"kb": "lc"}, headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [j["status"] for j in jobs["jobs"]] == ["done"] * 4

    for r in (local, web):
        hit = r.invoke("忘记密码怎么办？")[0]
        assert "重置邮件" in hit.page_content
        assert hit.metadata["heading"] == "账户 > 重置密码" and hit.metadata["file"].endswith("faq.md.kbdocs")
        hit = r.invoke("How long do refunds take to reach the card?")[0]
        assert "14 business days" in hit.page_content and hit.metadata["heading"] == "Billing > Refunds"
        hit = r.invoke(EN_QUERY[0])[0]
        assert EN_QUERY[1] in hit.page_content and hit.metadata["page"] == 5


def test_bundles_are_canonical_and_keep_pages_and_headings() -> None:
    a = Document("一", metadata={"source": "/x/a.pdf", "page": 0, "total_pages": 3, "producer": "p"})
    b = Document("二", metadata={"source": "/elsewhere/a.pdf", "page": 0, "total_pages": 3, "creator": "q"})
    ((name_a, data_a),) = make_bundles([a])
    ((name_b, data_b),) = make_bundles([b])
    assert name_a == name_b == "a.pdf.kbdocs" and data_a != data_b
    assert make_bundles([Document("一", metadata={"source": "/y/a.pdf", "page": 0, "total_pages": 1})])[0][1] \
        == data_a  # only content counts: the same text and page dedup whatever the path or loader metadata
    assert json.loads(data_a)["documents"] == [{"text": "一", "page": 1, "heading": None}]
    assert page_of({"page": 0, "total_pages": 2}) == 1  # LangChain PDF loaders count from 0
    assert page_of({"page_number": 3, "page": 9}) == 3 and page_of({"page": 4}) == 4 and page_of({}) is None
    assert heading_of({"Header 1": "A", "Header 2": "B"}) == "A > B" and heading_of({"heading": "H"}) == "H"
    with pytest.raises(TypeError):
        make_bundles(["not a document"])  # type: ignore[list-item]


def test_app_and_cli_start_without_langchain(tmp_path: Path) -> None:
    code = f"""
import sys
import app, kb.__main__, kb.service, kb.loaders, api.server
from configs.settings import load_settings
from services import Services
services = Services(load_settings(data_dir={str(tmp_path)!r}, embedding_model="use-multilingual"))
api.server.create_app(services)
assert kb.__main__.main(["list", "--data-dir", {str(tmp_path)!r}]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("langchain_core", "langchain_openai",
             "langchain_text_splitters", "langsmith") or m == "kb.langchain")
print("LANGCHAIN_MODULES", bad)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBCHAT_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env | {"HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LANGCHAIN_MODULES []" in proc.stdout, proc.stdout[-2000:]
