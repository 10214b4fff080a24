"""Many users at once through the real server: requests queue for the one LLM, none fails."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from conftest import DOCUMENTS, LiveServer, make_settings


def test_twenty_concurrent_chat_sessions_and_chat_during_rebuild(tmp_path):
    settings = make_settings(tmp_path / "data", max_tokens=8)
    with LiveServer(settings) as server:
        kb = server.services.kbs.create("docs")
        kb.ingest(sorted((DOCUMENTS / "md_kb_zh").glob("*.md")))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)

        def session(i: int) -> str:
            kwargs = {"model": "kb:docs"} if i % 2 else {"model": server.services.model_name()}
            if i % 3 == 0:  # a third stream, the rest wait for the whole answer
                chunks = client.chat.completions.create(
                    messages=[{"role": "user", "content": f"Question {i}: what is tensor parallelism?"}],
                    max_tokens=8, stream=True, **kwargs)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            r = client.chat.completions.create(
                messages=[{"role": "user", "content": f"Question {i}: what is data parallelism?"}],
                max_tokens=8, **kwargs)
            return r.choices[0].message.content or ""

        # A rebuild runs while the sessions are served: searches keep using the committed index.
        rebuild = threading.Thread(target=kb.rebuild)
        rebuild.start()
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(session, range(20)))
        rebuild.join()
        assert len(answers) == 20 and all(a.strip() for a in answers)
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 200
        assert kb.info()["files"] == len(list((DOCUMENTS / "md_kb_zh").glob("*.md")))
