"""Runs ChatService generation off the event loop, with cancellation.

A producer thread drives ``ChatService.stream`` and hands events to the loop through an asyncio queue; the
consumer (an SSE response, the polling sessions) awaits them. Closing the consumer sets the cancel Event at
once, which the backends check between tokens, so a disconnected client stops generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from api.errors import APIError, ModelUnavailable
from api.security import request_user
from kb.users import Principal
from llm.backends.base import LLMError
from llm.chat import ChatEvent, ChatOptions, ChatService
from services import Services, chat_user

_END = object()


def get_chat(services: Services) -> ChatService:
    """The chat service, loading the model on first use; a load failure is a 503 (the server is fine)."""
    try:
        return services.chat
    except LLMError as e:
        raise ModelUnavailable(f"the language model is not available: {e}") from e


def cap_max_tokens(services: Services, requested: int | None) -> int:
    # The server's max_tokens setting is a hard cap: a shared CPU box must not be tied up by one client.
    limit = services.settings.max_tokens
    return limit if requested is None else max(1, min(requested, limit))


def check_size(services: Services, question: str, history: list[tuple[str, str]]) -> None:
    """413 for a chat over the caps: one long message or a long history would tie up the model for minutes."""
    s = services.settings
    longest = max([len(question), *(len(t) for pair in history for t in pair)])
    if longest > s.max_message_chars:
        raise APIError(413, f"a message has {longest} characters; the limit is {s.max_message_chars} "
                       "(max_message_chars)", "message_too_long")
    check_message_count(services, 1 + sum(2 if a else 1 for _, a in history))


def check_message_count(services: Services, count: int) -> None:
    limit = services.settings.max_messages
    if count > limit:
        raise APIError(413, f"{count} messages in one request; the limit is {limit} (max_messages)",
                       "too_many_messages")


def check_kb(services: Services, who: Principal, name: str | None) -> None:
    """Fail fast (404 also for a KB ``who`` may not read) before any generation starts or a stream is opened."""
    if name:
        services.kb(who, name)


class ThreadedChat:
    """Async iterator over the ChatEvents of one generation running in a daemon thread.

    It holds one of the services' chat slots from creation until the generation ends (Busy, i.e. 429, when
    none is free or the user has ``max_chats_per_user``), so queued and running chats together stay under
    ``max_queued_chats``. ``request`` tells who asks (``options.user``), for the cap and the fair queue."""

    def __init__(self, services: Services, chat: ChatService, question: str, history: list[tuple[str, str]],
                 options: ChatOptions, request: Any = None):
        check_size(services, question, history)
        if options.user is None and request is not None:
            options.user = chat_user(request_user(request), services.users.local_admin(), None)
        self._user = options.user
        self._slots = services.chat_slots
        self._slots.acquire(self._user)
        self.cancel_event = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._thread = threading.Thread(target=self._produce, args=(chat, question, history, options),
                                        daemon=True, name="api-chat")
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is listening any more
            self.cancel_event.set()

    def _produce(self, chat: ChatService, question: str, history: list[tuple[str, str]],
                 options: ChatOptions) -> None:
        gen = None
        try:
            gen = chat.stream(question, history, options, cancel=self.cancel_event)
            for event in gen:
                self._put(event)
                if self.cancel_event.is_set():
                    break
        except BaseException as e:  # handed to the consumer, which renders it
            self._put(e)
        finally:
            if gen is not None:
                gen.close()
            self._slots.release(self._user)
            self._put(_END)

    def cancel(self) -> None:
        self.cancel_event.set()

    async def events(self) -> AsyncIterator[ChatEvent]:
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Normal end, client disconnect (CancelledError / aclose) or error: stop the producer either way.
            self.cancel_event.set()


async def collect(events: AsyncIterator[ChatEvent]) -> tuple[dict[str, Any], int]:
    """Drain a non-streaming generation: (the ``done`` payload, number of tokens)."""
    tokens, done = 0, None
    try:
        async for ev in events:
            tokens += ev.type == "token"
            if ev.type == "done":
                done = ev.data
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    if done is None:
        raise APIError(502, "the model stopped without an answer", "model_error")
    return done, tokens
