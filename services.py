"""What the web UI, the HTTP API and the CLI share: settings, the KB manager (with its job workers) and the
chat service (with its LLM, loaded once)."""

from __future__ import annotations

import threading
from collections import Counter
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
    """At most ``capacity`` holders at once, and at most ``per_user`` of them for one user. ``acquire`` never
    waits: a full server says so (HTTP 429) rather than letting requests pile up without bound."""

    def __init__(self, capacity: int, what: str, setting: str, per_user: int | None = None):
        self.capacity = capacity
        self.per_user = per_user
        self.in_use = 0
        self._users: Counter[str] = Counter()
        self._what, self._setting = what, setting
        self._lock = threading.Lock()

    def acquire(self, user: str | None = None) -> None:
        """``user`` None: a holder nobody can tell apart from others, counted only against ``capacity``."""
        with self._lock:
            if self.in_use >= self.capacity:
                raise Busy(f"the server is busy: {self.in_use} {self._what} already ({self._setting}="
                           f"{self.capacity}); retry shortly")
            if user is not None and self.per_user is not None and self._users[user] >= self.per_user:
                raise Busy(f"you already have {self._users[user]} chats running or queued (max_chats_per_user="
                           f"{self.per_user}); wait for one to finish", retry_after=5)
            self.in_use += 1
            if user is not None:
                self._users[user] += 1

    def release(self, user: str | None = None) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - 1)
            if user is not None and self._users[user] > 0:
                self._users[user] -= 1
                if not self._users[user]:
                    del self._users[user]


def chat_user(who: Principal, local_admin: Principal, session: str | None) -> str | None:
    """Whose chat this is, for the fair queue and the per-user cap: an account by its id. The built-in admin
    (an open install, or the settings credentials) may be many people: a web UI session is one user then, and
    an API request from it is nobody in particular (None: its own turn in the queue, no per-user cap)."""
    if who.id != local_admin.id:
        return f"user:{who.id}"
    return f"session:{session}" if session else None


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
        self.chat_slots = Slots(settings.max_queued_chats, "chats queued for the model", "max_queued_chats",
                                per_user=settings.max_chats_per_user)
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

    def ui_chat_user(self, request: Any) -> str | None:
        """The chat user of a Gradio event (see ``chat_user``): its account, or its browser session."""
        return chat_user(self.ui_user(request), self.users.local_admin(), getattr(request, "session_hash", None))

    def close(self) -> None:
        self.kbs.close()

    def model_name(self) -> str:
        return self.settings.llm_model if self.settings.llm_backend != "openai" else self.settings.openai_model
