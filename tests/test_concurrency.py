"""Many users at once through the real server: requests queue for the one LLM, none fails, and chat
during a rebuild answers from the whole committed KB."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import DOCUMENTS, LiveServer, make_settings
from kb.service import _EMBED_BATCH_CHUNKS
from llm import prompts
from tests.rebuild_pause import RebuildThread, pause_before_last_file

pytestmark = pytest.mark.slow

KB_DIR = DOCUMENTS / "md_kb_zh"
# Ingest (and so rebuild) order: the two big files first, so the rebuild has flushed a full embedding batch
# before it reaches the file every KB question is about (DPO, RRHF and LIMA are only in the last one).
FILES = [KB_DIR / name for name in ("kotaemon__policy.md", "Langchain-Chatchat__分布式训练技术原理.md",
                                    "Langchain-Chatchat__大模型技术栈-实战与应用.md",
                                    "Langchain-Chatchat__大模型指令对齐训练原理.md")]
ANSWER_FILE = FILES[-1].name
QUESTIONS = ["What is DPO (Direct Preference Optimization)?", "What is RRHF?", "What is LIMA in alignment?"]
SESSIONS = 20


def test_twenty_concurrent_chat_sessions_and_chat_during_rebuild(tmp_path: Path) -> None:
    # Small chunks give the four files enough chunks to span several embedding batches; max_queued_chats lets
    # all sessions queue.
    settings = make_settings(tmp_path / "data", max_tokens=8, chunk_size=60, chunk_overlap=0,
                             max_queued_chats=SESSIONS)
    with LiveServer(settings) as server:
        kb = server.services.kbs.create("docs")
        ingested = kb.ingest(FILES)
        assert [r.status for r in ingested] == ["indexed"] * len(FILES)
        assert sum(r.chunks for r in ingested[:-1]) >= _EMBED_BATCH_CHUNKS
        chunks = kb.info()["chunks"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)

        def session(i: int) -> dict[str, Any]:
            """One user: odd sessions ask the KB, even ones chat with the model; every third one streams."""
            kb_chat = i % 2 == 1
            kwargs = {"model": "kb:docs"} if kb_chat else {"model": server.services.model_name()}
            question = QUESTIONS[i % len(QUESTIONS)]
            messages = [{"role": "user", "content": question}]
            if i % 3 == 0:
                stream = list(client.chat.completions.create(messages=messages, max_tokens=8, stream=True, **kwargs))
                answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                extra = stream[-1].model_extra or {}  # the last chunk carries the sources
            else:
                r = client.chat.completions.create(messages=messages, max_tokens=8, **kwargs)
                answer, extra = r.choices[0].message.content or "", r.model_extra or {}
            return {"kb": kb_chat, "answer": answer, "sources": extra.get("sources")}

        # All sessions run while the rebuild is held just before its last file: everything else has been
        # re-read, and readers must still search the last committed index, which has every file.
        resume, paused = threading.Event(), threading.Event()
        rebuild = RebuildThread(kb, pause_before_last_file(resume, paused))
        rebuild.start()
        try:
            while not paused.wait(timeout=0.5):
                assert rebuild.is_alive(), "the rebuild ended before its last file"
            with ThreadPoolExecutor(max_workers=SESSIONS) as pool:
                replies = list(pool.map(session, range(SESSIONS)))
        finally:
            resume.set()
            rebuild.join(timeout=600)  # re-raises whatever the rebuild thread raised

        assert len(replies) == SESSIONS and all(r["answer"].strip() for r in replies)
        no_hit = prompts.no_hit_message(settings.score_threshold, "en")
        kb_replies = [r for r in replies if r["kb"]]
        assert len(kb_replies) == SESSIONS // 2
        for r in kb_replies:  # a real answer: grounded in the file that has it, not the canned "nothing found"
            assert r["sources"] and r["sources"][0]["file"] == ANSWER_FILE, r
            assert r["answer"] != no_hit
        assert [r.status for r in rebuild.results] == ["indexed"] * len(FILES)
        assert (kb.info()["files"], kb.info()["chunks"]) == (len(FILES), chunks)
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 200
