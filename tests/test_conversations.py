"""Conversations kept by the server: the REST API end to end (real server, real LLM, real KBs), a restart,
feedback and its export, several KBs in one chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm.chat import check_citations
from tests.conftest import DOCUMENTS, LiveServer, make_settings
from tests.test_api import FACT_FILE, FACT_TEXT, assert_error
from tests.test_cli import kb_cli

ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md"
PDF = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__langchain.pdf"


def read_sse(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.read()
    assert r.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("conv")
    facts = d / FACT_FILE
    facts.write_text(FACT_TEXT, encoding="utf-8")
    from kb.service import KnowledgeBaseManager

    mgr = KnowledgeBaseManager(make_settings(d / "data", max_tokens=24))
    mgr.create("facts").ingest([facts])
    mgr.create("zh").ingest([ZH_MD, PDF])
    mgr.close()
    return d / "data"


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(data_dir, max_tokens=24)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_ask_stream_sources_first_rate_regenerate_and_restart(server: LiveServer, http: httpx.Client,
                                                             data_dir: Path) -> None:
    r = http.post("/api/conversations", json={"knowledge_bases": ["facts"]})
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["title"] == "" and conv["knowledge_bases"] == ["facts"] and conv["id"]
    cid = conv["id"]

    # Streamed: the first event carries the question and the sources, before any token.
    with http.stream("POST", f"/api/conversations/{cid}/messages",
                     json={"content": "What powers the Zorblat reactor?"}) as r:
        events = read_sse(r)
    assert events[0]["type"] == "sources", events[:2]
    assert events[0]["question"]["content"] == "What powers the Zorblat reactor?"
    first_sources = events[0]["sources"]
    assert first_sources and first_sources[0]["file"] == FACT_FILE and first_sources[0]["kb"] == "facts"
    assert {"kb", "file", "file_id", "page", "score", "chunk_id", "text"} <= set(first_sources[0])
    tokens = [e["content"] for e in events if e["type"] == "token"]
    done = events[-1]
    assert done["type"] == "done" and [e["type"] for e in events[1:-1]] == ["token"] * len(tokens)
    answer1 = done["message"]
    streamed, cited, invalid = check_citations("".join(tokens), len(first_sources))
    assert tokens and answer1["content"] == streamed and answer1["role"] == "assistant"
    assert (answer1["meta"]["citations"], answer1["meta"]["invalid_citations"]) == (cited, invalid)
    assert answer1["sources"] == first_sources and answer1["meta"]["status"] == "done"
    assert answer1["meta"]["model"] and answer1["meta"]["completion_tokens"] == len(tokens)
    assert answer1["meta"]["timings"]["first_token_s"] is not None

    # Not streamed: the reply is the stored assistant message.
    r = http.post(f"/api/conversations/{cid}/messages?stream=false",
                  json={"content": "Who commissioned it, and when?"})
    assert r.status_code == 200, r.text
    answer2 = r.json()
    assert answer2["role"] == "assistant" and answer2["id"] and answer2["content"] and answer2["sources"]

    # Feedback on an answer; only answers can be rated, and only with 1 or -1.
    r = http.post(f"/api/messages/{answer2['id']}/feedback", json={"rating": -1, "comment": "名字不对"})
    assert r.status_code == 200 and r.json()["rating"] == -1, r.text
    assert http.post(f"/api/messages/{answer1['id']}/feedback", json={"rating": 1}).status_code == 200
    assert_error(http.post(f"/api/messages/{answer2['id']}/feedback", json={"rating": 0}), 422)
    full = http.get(f"/api/conversations/{cid}").json()
    assert [m["role"] for m in full["messages"]] == ["user", "assistant"] * 2
    assert_error(http.post(f"/api/messages/{full['messages'][0]['id']}/feedback", json={"rating": 1}), 404)
    assert_error(http.post("/api/messages/nope/feedback", json={"rating": 1}), 404)
    assert full["title"] == "What powers the Zorblat reactor?"  # named after its first question
    assert full["messages"][3]["feedback"]["comment"] == "名字不对"

    # Rename, search by title.
    assert http.patch(f"/api/conversations/{cid}", json={"title": "Reactor 问答"}).json()["title"] == "Reactor 问答"
    assert [c["id"] for c in http.get("/api/conversations", params={"q": "reactor"}).json()["conversations"]] == [cid]
    assert http.get("/api/conversations", params={"q": "nothing like it"}).json()["conversations"] == []

    # Regenerate the last answer: the question is re-asked from its place; the old answer and its rating go.
    question2 = full["messages"][2]
    r = http.post(f"/api/conversations/{cid}/messages?stream=false",
                  json={"content": question2["content"], "replace_from": question2["id"]})
    assert r.status_code == 200, r.text
    after = http.get(f"/api/conversations/{cid}").json()["messages"]
    assert len(after) == 4 and after[3]["id"] == r.json()["id"] != answer2["id"]
    assert after[3]["feedback"] is None and after[1]["feedback"]["rating"] == 1

    # A restart keeps every conversation, message and rating.
    with LiveServer(make_settings(data_dir, max_tokens=24)) as again, httpx.Client(base_url=again.url,
                                                                                 timeout=300) as c2:
        kept = c2.get(f"/api/conversations/{cid}").json()
    assert kept["title"] == "Reactor 问答"
    assert [(m["id"], m["content"]) for m in kept["messages"]] == [(m["id"], m["content"]) for m in after]
    assert kept["messages"][1]["feedback"]["rating"] == 1 and kept["messages"][1]["sources"] == first_sources

    # Exported for review, oldest rating first, with the question it answered.
    rows = [json.loads(line) for line in kb_cli("feedback", "export", data_dir=data_dir).stdout.splitlines()]
    assert [(r["rating"], r["question"]) for r in rows] == [(1, "What powers the Zorblat reactor?")]
    assert rows[0]["answer"] == answer1["content"] and rows[0]["knowledge_bases"] == ["facts"]
    for flags in (["--kb", "zh"], ["--rating", "-1"]):  # another KB; the 👎 answer went with the regenerate
        assert kb_cli("feedback", "export", *flags, data_dir=data_dir).stdout == ""

    assert http.delete(f"/api/conversations/{cid}").status_code == 200
    assert_error(http.get(f"/api/conversations/{cid}"), 404)
    assert_error(http.post(f"/api/messages/{answer1['id']}/feedback", json={"rating": 1}), 404)


def test_plain_chat_conversation_streams_an_empty_sources_event_first(http: httpx.Client) -> None:
    cid = http.post("/api/conversations", json={}).json()["id"]
    with http.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Say hello."}) as r:
        events = read_sse(r)
    assert events[0] == {"type": "sources", "question": events[0]["question"], "query": None, "sources": []}
    assert events[-1]["type"] == "done" and events[-1]["message"]["content"]


def test_second_question_while_the_first_is_answered_is_a_conflict(http: httpx.Client) -> None:
    cid = http.post("/api/conversations", json={"knowledge_bases": ["facts"]}).json()["id"]
    with http.stream("POST", f"/api/conversations/{cid}/messages", json={"content": "Zorblat output?"}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["type"] == "sources"
        err = assert_error(http.post(f"/api/conversations/{cid}/messages?stream=false",
                                     json={"content": "And another?"}), 409)
        assert "still being answered" in err["message"]
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert rest[-1]["type"] == "done"
    assert len(http.get(f"/api/conversations/{cid}").json()["messages"]) == 2


def test_bad_requests_get_clear_errors_and_store_nothing(http: httpx.Client) -> None:
    assert_error(http.post("/api/conversations", json={"knowledge_bases": ["missing"]}), 404)
    cid = http.post("/api/conversations", json={}).json()["id"]
    assert_error(http.post(f"/api/conversations/{cid}/messages", json={"content": ""}), 422)
    assert_error(http.post(f"/api/conversations/{cid}/messages", json={"content": "x" * 9000}), 413)
    assert_error(http.post(f"/api/conversations/{cid}/messages",
                           json={"content": "hi", "knowledge_bases": ["missing"]}), 404)
    assert_error(http.post(f"/api/conversations/{cid}/messages", json={"content": "hi", "replace_from": "nope"}),
                 404)
    assert_error(http.post("/api/conversations/nope/messages", json={"content": "hi"}), 404)
    assert_error(http.patch(f"/api/conversations/{cid}", json={"title": "t" * 201}), 422)
    assert http.get(f"/api/conversations/{cid}").json()["messages"] == []


def test_one_chat_over_several_kbs_merges_hits_on_one_score(server: LiveServer) -> None:
    from llm.chat import ChatOptions, search_all

    kbs = [server.services.kbs.get("facts"), server.services.kbs.get("zh")]
    hits = search_all(kbs, "Zorblat reactor 流水线并行", top_k=6, threshold=0.0)
    assert {h.kb for h in hits} == {"facts", "zh"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 6
    events = list(server.services.chat.stream("Zorblat reactor 流水线并行", [],
                                              ChatOptions(kb=["facts", "zh"], threshold=0.0)))
    sources = next(e.data for e in events if e.type == "sources")
    assert {h.kb for h in sources} == {"facts", "zh"} and events[-1].type == "done"


def test_a_source_opens_at_its_page_highlighted_and_downloads(http: httpx.Client, data_dir: Path) -> None:
    hits = http.post("/api/kb/zh/search", json={"query": "LangChain agents tools", "top_k": 10,
                                                 "threshold": 0.0}).json()["hits"]
    pdf_hit = next(h for h in hits if h["file"] == PDF.name and h["page"])
    view = http.get(f"/api/files/zh/{pdf_hit['file_id']}/preview", params={"chunk": pdf_hit["chunk_id"]}).json()
    assert (view["kind"], view["page"], view["file"]) == ("pdf", pdf_hit["page"], PDF.name)
    marked = http.get(view["image"])
    assert marked.status_code == 200 and marked.headers["content-type"] == "image/png"
    assert marked.content.startswith(b"\x89PNG")
    plain = http.get(f"/api/files/zh/{pdf_hit['file_id']}/pages/{pdf_hit['page']}.png")
    assert plain.status_code == 200 and plain.content != marked.content  # the cited text is highlighted
    assert_error(http.get(f"/api/files/zh/{pdf_hit['file_id']}/pages/999.png"), 400)

    original = http.get(view["download"])
    assert original.status_code == 200 and original.content == PDF.read_bytes()
    assert original.headers["content-disposition"].startswith("attachment; filename*=UTF-8''Langchain-Chatchat__")

    fact = http.post("/api/kb/facts/search", json={"query": "Zorblat reactor", "threshold": 0.0}).json()["hits"][0]
    text_view = http.get(f"/api/files/facts/{fact['file_id']}/preview", params={"chunk": fact["chunk_id"]}).json()
    assert text_view["kind"] == "text" and "image" not in text_view
    assert [c["text"] for c in text_view["context"] if c["cited"]] == [fact["text"]]
    assert_error(http.get("/api/files/facts/" + "0" * 64 + "/preview"), 404)
    assert_error(http.get(f"/api/files/zh/{fact['file_id']}/preview"), 404)  # that file is in another KB
