"""Migration routes for ChatGLM-era clients.

``POST /api/chat`` is ChatGLM-6B's api.py protocol. ``POST /api/stream_chat`` is the aliendao-style polling
stream: the client repeats the same request; the first call starts generation in the background, each call
returns the answer so far with ``"stop": false``, until one returns the full answer with ``"stop": true``.
Sessions are keyed by a hash of (prompt, history, knowledge_base) and dropped when finished and read, or after
``SESSION_IDLE_S`` without a poll (an abandoned generation is cancelled).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.chat_runner import ThreadedChat, cap_max_tokens, check_kb, collect, get_chat
from api.errors import APIError
from api.schemas import LegacyChatRequest, history_pairs
from api.security import request_user
from llm.chat import ChatOptions
from services import Services

router = APIRouter(prefix="/api", tags=["migration (ChatGLM api.py)"])

SESSION_IDLE_S = 60.0
MAX_SESSIONS = 32


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _options(services: Services, body: LegacyChatRequest) -> ChatOptions:
    return ChatOptions(kb=body.knowledge_base or None, top_k=body.top_k, threshold=body.score_threshold,
                       temperature=body.temperature, top_p=body.top_p,
                       max_tokens=cap_max_tokens(services, body.max_length))


def _reply(body: LegacyChatRequest, history: list[tuple[str, str]], answer: str, sources: list[Any],
           **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"response": answer, "history": [list(p) for p in history] + [[body.prompt, answer]]}
    out |= extra | {"status": 200, "time": _now()}
    if body.knowledge_base:
        out["sources"] = [h.source() for h in sources]
    return out


async def _start(request: Request, body: LegacyChatRequest, history: list[tuple[str, str]]) -> ThreadedChat:
    services: Services = request.app.state.services
    await run_in_threadpool(check_kb, services, request_user(request), body.knowledge_base or None)
    chat = await run_in_threadpool(get_chat, services)
    return ThreadedChat(services, chat, body.prompt, history, _options(services, body))


@router.post("/chat", summary="ChatGLM api.py protocol: {prompt, history, max_length, top_p, temperature}")
async def legacy_chat(body: LegacyChatRequest, request: Request) -> dict[str, Any]:
    history = history_pairs(body.history)
    run = await _start(request, body, history)
    done, _ = await collect(run.events())
    return _reply(body, history, done["answer"], done["sources"])


# --- polling stream --------------------------------------------------------------------------
@dataclass
class _Session:
    run: ThreadedChat
    text: str = ""
    sources: list[Any] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    last_seen: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None

    async def consume(self) -> None:
        events = self.run.events()
        try:
            async for ev in events:
                if ev.type == "token":
                    self.text += ev.data
                elif ev.type == "sources":
                    self.sources = ev.data
                elif ev.type == "done":
                    self.text, self.sources = ev.data["answer"], ev.data["sources"]
                if time.monotonic() - self.last_seen > SESSION_IDLE_S:
                    self.run.cancel()  # nobody is polling any more
                    break
        except Exception as e:  # reported to the next poll
            self.error = e
        finally:
            await events.aclose()
            self.done = True


class StreamSessions:
    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}

    def sweep(self) -> None:
        now = time.monotonic()
        for key, s in list(self.sessions.items()):
            if now - s.last_seen > SESSION_IDLE_S:
                s.run.cancel()
                self.sessions.pop(key, None)


def _key(body: LegacyChatRequest, history: list[tuple[str, str]]) -> str:
    raw = json.dumps([body.prompt, history, body.knowledge_base or None], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


@router.post("/stream_chat", summary="Polling stream: repeat the same request until the reply has stop=true")
async def stream_chat(body: LegacyChatRequest, request: Request) -> dict[str, Any]:
    store: StreamSessions = request.app.state.stream_sessions
    store.sweep()
    history = history_pairs(body.history)
    key = _key(body, history)
    session = store.sessions.get(key)
    if session is None:
        if len(store.sessions) >= MAX_SESSIONS:
            raise APIError(429, "too many polling-stream sessions in progress; retry shortly", "too_many_sessions")
        run = await _start(request, body, history)
        session = store.sessions.setdefault(key, _Session(run))
        if session.run is not run:  # a concurrent identical request won the race
            run.cancel()
        else:
            session.task = asyncio.create_task(session.consume())
            await asyncio.sleep(0)  # let the consumer start so a fast first token can show up at once
    session.last_seen = time.monotonic()
    if session.error is not None:
        store.sessions.pop(key, None)
        raise session.error
    if session.done:
        store.sessions.pop(key, None)  # the next identical request starts a fresh generation
    return _reply(body, history, session.text, session.sources, stop=session.done)
