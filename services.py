"""What the web UI, the HTTP API and the CLI share: settings, the KB manager (with its job workers) and the
chat service (with its LLM, loaded once)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from configs.settings import Settings
from kb.conversations import Conversations
from kb.service import KnowledgeBase, KnowledgeBaseManager
from kb.types import Busy
from kb.users import Principal, Users

if TYPE_CHECKING:
    from llm.backends.base import LLMBackend
    from llm.chat import ChatService


class Slots:
    """At most ``capacity`` holders at once. ``acquire`` never waits: a full server says so (HTTP 429) rather
    than letting requests pile up without bound."""

    def __init__(self, capacity: int, what: str, setting: str):
        self.capacity = capacity
        self.in_use = 0
        self._what, self._setting = what, setting
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.in_use >= self.capacity:
                raise Busy(f"the server is busy: {self.in_use} {self._what} already ({self._setting}="
                           f"{self.capacity}); retry shortly")
            self.in_use += 1

    def release(self) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - 1)


class Services:
    def __init__(self, settings: Settings, backend: LLMBackend | None = None):
        self.settings = settings
        # KB jobs (ingest, rebuild) live in the database; this process runs ``max_jobs`` of them at once,
        # and other app processes on the same database run theirs.
        self.kbs = KnowledgeBaseManager(settings, workers=settings.max_jobs)
        self.jobs = self.kbs.jobs
        self.users = Users(self.kbs.db)
        self.conversations = Conversations(self.kbs.db)
        # Chats generating or waiting for the LLM, from the API and the UI together.
        self.chat_slots = Slots(settings.max_queued_chats, "chats queued for the model", "max_queued_chats")
        self._backend = backend
        self._chat: ChatService | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> LLMBackend:
        with self._lock:
            if self._backend is None:
                from llm.backends import create_backend

                self._backend = create_backend(self.settings)
            return self._backend

    @property
    def chat(self) -> ChatService:
        backend = self.backend
        with self._lock:
            if self._chat is None:
                from llm.chat import ChatService

                self._chat = ChatService(self.settings, self.kbs, backend)
            return self._chat

    def kb(self, who: Principal, name: str, write: bool = False) -> KnowledgeBase:
        """A KB as ``who`` may use it: 404 when they may not read it, 403 when they may read but not change it."""
        return self.users.kb(who, self.kbs, name, write)

    def kb_names(self, who: Principal) -> list[str]:
        return self.users.readable(who, self.kbs)

    def ui_user(self, request: Any) -> Principal:
        """Who a Gradio event acts for: the account it logged in as, else the local admin (settings
        credentials, or an open install). AccessGuard already refused requests without a session."""
        return self.users.login_name(getattr(request, "username", None))

    def close(self) -> None:
        self.kbs.close()

    def model_name(self) -> str:
        return self.settings.llm_model if self.settings.llm_backend != "openai" else self.settings.openai_model
