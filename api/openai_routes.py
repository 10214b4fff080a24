"""OpenAI-compatible routes: /v1/models, /v1/chat/completions (stream and not), /v1/embeddings."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from api.chat_runner import ThreadedChat, cap_max_tokens, check_kb, check_message_count, collect, get_chat
from api.errors import APIError, payload_for
from api.schemas import ChatCompletionRequest, ChatMessage, EmbeddingRequest
from api.security import request_user
from kb.embeddings import PACKAGED
from kb.users import Principal
from llm.chat import ChatEvent, ChatOptions
from services import Services

router = APIRouter(prefix="/v1", tags=["openai"])

KB_PREFIX = "kb:"


def _services(request: Request) -> Services:
    return request.app.state.services


def _model_entry(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "local"} | extra


def _list_models(services: Services, who: Principal) -> list[dict[str, Any]]:
    models = [_model_entry(services.model_name())]
    models += [_model_entry(KB_PREFIX + name, knowledge_base=name) for name in services.kb_names(who)]
    return models


@router.get("/models", summary="The loaded LLM and one 'kb:<name>' entry per knowledge base")
def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _list_models(_services(request), request_user(request))}


@router.get("/models/{model_id:path}", summary="One model entry")
def get_model(model_id: str, request: Request) -> dict[str, Any]:
    for m in _list_models(_services(request), request_user(request)):
        if m["id"] == model_id:
            return m
    raise APIError(404, f"model '{model_id}' does not exist", "model_not_found")


# --- chat ------------------------------------------------------------------------------------
def _text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.type != "text":
            raise APIError(400, f"unsupported message content part '{part.type}': only text is supported",
                           "unsupported_content")
        parts.append(part.text or "")
    return "".join(parts)


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The last user message is the question; earlier user/assistant turns become (question, answer) pairs.
    System/developer/tool messages are ignored: the app's own prompts frame the model (they carry the KB
    grounding rules, which a client system prompt must not replace)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        raise APIError(400, "messages must contain a user message", "invalid_messages")
    question = _text(messages[last_user]).strip()
    if not question:
        raise APIError(400, "the last user message is empty", "invalid_messages")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in messages[:last_user]:
        if m.role == "user":
            if pending is not None:
                history.append((pending, ""))
            pending = _text(m)
        elif m.role == "assistant":
            history.append((pending or "", _text(m)))
            pending = None
    if pending is not None:
        history.append((pending, ""))
    return question, history


def _kb_name(body: ChatCompletionRequest) -> str | None:
    from_model = body.model[len(KB_PREFIX):] if body.model.startswith(KB_PREFIX) else None
    if from_model is not None and body.knowledge_base and body.knowledge_base != from_model:
        raise APIError(400, f"model '{body.model}' and knowledge_base '{body.knowledge_base}' disagree",
                       "invalid_request")
    return body.knowledge_base or from_model or None


def _stop_list(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise APIError(400, "stop: at most 4 sequences", "invalid_request")
    return [s for s in stops if s] or None


def _finish_reason(tokens: int, max_tokens: int) -> str:
    # The backends stream about one token per piece, so reaching the cap means the answer was cut.
    return "length" if tokens >= max_tokens else "stop"


@router.post("/chat/completions", summary="Chat (plain, or over a KB with model='kb:<name>'), streaming or not",
             response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    services = _services(request)
    check_message_count(services, len(body.messages))  # system messages count too, though not passed on
    question, history = split_messages(body.messages)
    kb = _kb_name(body)
    await run_in_threadpool(check_kb, services, request_user(request), kb)
    chat = await run_in_threadpool(get_chat, services)  # loads the model on first use
    max_tokens = cap_max_tokens(services, body.max_completion_tokens or body.max_tokens)
    options = ChatOptions(kb=kb, top_k=body.top_k, threshold=body.score_threshold, mode=body.search_mode,
                          temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens,
                          stop=_stop_list(body.stop))
    model = body.model if kb and body.model.startswith(KB_PREFIX) else services.model_name()
    run = ThreadedChat(services, chat, question, history, options, request)
    events = run.events()
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    if not body.stream:
        done, tokens = await collect(events)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done["answer"]},
                         "finish_reason": _finish_reason(tokens, max_tokens)}],
            "sources": [h.source() for h in done["sources"]],
            "retrieval_query": done["query"] if kb else None,
        })

    # Pull the first event before answering so early failures (unknown KB, model errors) get real statuses.
    try:
        first: ChatEvent | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]} | extra
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def sse() -> AsyncIterator[str]:
        tokens = 0
        try:
            yield chunk({"role": "assistant", "content": ""})
            pending = [first] if first is not None else []
            async for ev in _chain(pending, events):
                if ev.type == "token" and ev.data:
                    tokens += 1
                    yield chunk({"content": ev.data})
                elif ev.type == "done":
                    done = ev.data
                    yield chunk({}, _finish_reason(tokens, max_tokens),
                                sources=[h.source() for h in done["sources"]],
                                retrieval_query=done["query"] if kb else None)
            yield "data: [DONE]\n\n"
        except Exception as e:
            # Headers are gone: report in-band the way OpenAI does (its client raises on an "error" chunk).
            yield f"data: {json.dumps(payload_for(e)[1], ensure_ascii=False)}\n\n"
        finally:
            run.cancel()  # client gone or done: stop generating
            await events.aclose()

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _chain(first: list[ChatEvent], rest: AsyncIterator[ChatEvent]) -> AsyncIterator[ChatEvent]:
    for ev in first:
        yield ev
    async for ev in rest:
        yield ev


# --- embeddings ------------------------------------------------------------------------------
def _embedder_spec(services: Services, who: Principal, model: str | None) -> str:
    if model and model.startswith(KB_PREFIX):
        return services.kb(who, model[len(KB_PREFIX):]).row().embedding_model
    if model in PACKAGED:
        return model
    # OpenAI clients send their own model names (text-embedding-3-small, ...): use the KB default model.
    return services.settings.embedding_model


@router.post("/embeddings", summary="Embed text with a packaged model (default: the KB default embedding model)")
def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    services = _services(request)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    s = services.settings
    if not texts:
        raise APIError(400, "input: give at least one string", "invalid_input")
    if len(texts) > s.max_embed_inputs:
        raise APIError(413, f"input: {len(texts)} strings; the limit is {s.max_embed_inputs} per call "
                       "(max_embed_inputs)", "too_many_inputs")
    longest = max(len(t) for t in texts)
    if longest > s.max_embed_chars:
        raise APIError(413, f"input: a string has {longest} characters; the limit is {s.max_embed_chars} "
                       "(max_embed_chars)", "input_too_long")
    spec = _embedder_spec(services, request_user(request), body.model)
    emb = services.kbs.embedder(spec)
    if body.dimensions is not None and body.dimensions != emb.dim:
        raise APIError(400, f"dimensions: model '{emb.name}' produces {emb.dim}-dimensional vectors", "invalid_input")
    if body.input_type in ("query", "search_query"):
        vectors = np.asarray([emb.encode_query(t) for t in texts], dtype=np.float32)
    else:
        vectors = np.asarray(emb.encode_documents(texts), dtype=np.float32)
    tokens = sum(emb.count_tokens(t) for t in texts)
    data = []
    for i, v in enumerate(vectors):
        value: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
            else [float(x) for x in v]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": emb.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
