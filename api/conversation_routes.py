"""Conversations kept in the app database: list, open, rename, delete, ask (streamed or not), rate answers.

A question is answered with the conversation's own history; the answer is stored with its retrieval query,
sources, model, generation settings, timings and token count. The stream's first event carries the sources
(before any token), so a client can show them while the answer is written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.chat_runner import ThreadedChat, cap_max_tokens, check_kb, get_chat
from api.errors import APIError, payload_for
from api.schemas import ConversationCreate, ConversationUpdate, FeedbackCreate, MessageCreate
from api.security import request_user
from kb.conversations import AnswerRecorder
from llm.chat import ChatOptions
from services import Services

router = APIRouter(prefix="/api", tags=["conversations"])


def _services(request: Request) -> Services:
    return request.app.state.services


def _user(request: Request) -> int:
    return request_user(request).id


@router.get("/conversations", summary="Your conversations, most recent first; q= filters by title")
def list_conversations(request: Request, q: str | None = Query(None, max_length=200)) -> dict[str, Any]:
    services = _services(request)
    return {"conversations": services.conversations.list(_user(request), q)}


@router.post("/conversations", status_code=201, summary="Start a conversation (plain chat, or over KBs)")
def create_conversation(body: ConversationCreate, request: Request) -> dict[str, Any]:
    services = _services(request)
    for name in body.knowledge_bases:
        check_kb(services, request_user(request), name)
    return services.conversations.create(_user(request), body.title, body.knowledge_bases)


@router.get("/conversations/{cid}", summary="A conversation with its messages (sources, feedback)")
def get_conversation(cid: str, request: Request) -> dict[str, Any]:
    return _services(request).conversations.get(_user(request), cid)


@router.patch("/conversations/{cid}", summary="Rename a conversation or change its knowledge bases")
def update_conversation(cid: str, body: ConversationUpdate, request: Request) -> dict[str, Any]:
    services = _services(request)
    for name in body.knowledge_bases or []:
        check_kb(services, request_user(request), name)
    return services.conversations.update(_user(request), cid, body.title, body.knowledge_bases)


@router.delete("/conversations/{cid}", summary="Delete a conversation with its messages and feedback")
def delete_conversation(cid: str, request: Request) -> dict[str, Any]:
    _services(request).conversations.delete(_user(request), cid)
    return {"deleted": cid}


@router.post("/messages/{message_id}/feedback", summary="Rate an answer: 1 (good) or -1 (bad), with a comment")
def rate_message(message_id: str, body: FeedbackCreate, request: Request) -> dict[str, Any]:
    return _services(request).conversations.rate(_user(request), message_id, body.rating, body.comment)


@router.post("/conversations/{cid}/messages", response_model=None,
             summary="Ask in a conversation: SSE (first event: sources; then tokens; then the stored answer), "
                     "or the stored answer as JSON with stream=false")
async def post_message(cid: str, body: MessageCreate, request: Request,
                       stream: bool = Query(True)) -> JSONResponse | StreamingResponse:
    services = _services(request)
    store, user, s = services.conversations, _user(request), services.settings
    conv = await run_in_threadpool(store.info, user, cid)  # 404 before anything else
    kbs = conv["knowledge_bases"] if body.knowledge_bases is None else body.knowledge_bases
    for name in kbs:
        await run_in_threadpool(check_kb, services, request_user(request), name)
    history = await run_in_threadpool(store.history, user, cid, body.replace_from)
    # The prompt keeps history_turns turns; the rest stays in the database, never in the request to the model.
    history = history[-s.history_turns:] if s.history_turns > 0 else []
    chat = await run_in_threadpool(get_chat, services)
    max_tokens = cap_max_tokens(services, body.max_tokens)
    options = ChatOptions(kb=kbs, top_k=body.top_k, threshold=body.score_threshold, mode=body.search_mode,
                          temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens)
    run = ThreadedChat(services, chat, body.content, history, options, request)  # 413 / 429 before anything is stored
    events = run.events()
    try:
        question = await run_in_threadpool(store.ask, user, cid, body.content, body.knowledge_bases,
                                           body.replace_from)
    except BaseException:
        await events.aclose()
        raise
    answer = AnswerRecorder(services.conversations, services.model_name(), services.settings, cid,
                            question["id"], kbs, options)

    if not stream:
        try:
            async for ev in events:
                answer.see(ev)
        except BaseException:
            answer.status = "error"  # keep the question answered (empty), so the conversation goes on
            await run_in_threadpool(answer.save)
            raise
        finally:
            await events.aclose()
        stored = await run_in_threadpool(answer.save)
        if stored is None:
            raise APIError(409, "the conversation changed while this answer was written; it was not kept",
                           "conversation_changed")
        return JSONResponse(stored)

    def sse(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def produce() -> AsyncIterator[str]:
        sent_sources = False
        try:
            async for ev in events:
                answer.see(ev)
                if not sent_sources and ev.type in ("sources", "token", "done"):
                    sent_sources = True
                    yield sse({"type": "sources", "question": question, "query": answer.query,
                               "sources": answer.sources})
                if ev.type == "queue":  # the model is busy: how many answers come before this one
                    yield sse({"type": "queue", "ahead": ev.data["ahead"]})
                if ev.type == "token" and ev.data:
                    yield sse({"type": "token", "content": ev.data})
            stored = await run_in_threadpool(answer.save)
            yield sse({"type": "done", "message": stored})
        except Exception as e:
            answer.status = "error"
            yield sse({"type": "error"} | payload_for(e)[1])
        finally:
            run.cancel()
            await events.aclose()
            if not answer.stored:  # client gone or an error: keep what was written, marked as such
                if answer.status == "done":
                    answer.status = "stopped"
                answer.save()

    return StreamingResponse(produce(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
