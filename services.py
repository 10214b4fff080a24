"""What the web UI, the HTTP API and the CLI share: settings, the KB manager, the chat service
(with its LLM, loaded once) and background jobs for long KB operations."""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from configs.settings import Settings
from kb.service import KnowledgeBaseManager
from kb.types import KBError

if TYPE_CHECKING:
    from llm.backends.base import LLMBackend
    from llm.chat import ChatService


@dataclass
class Job:
    """A long KB operation (ingest, rebuild) running in a background thread."""

    id: str
    kind: str
    kb: str
    status: str = "running"  # running | done | failed
    progress: float = 0.0
    message: str = ""
    result: Any = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("id", "kind", "kb", "status", "progress", "message", "result", "error", "started_at", "finished_at")}


class Busy(Exception):
    """The server is at a configured capacity; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


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


class Jobs:
    def __init__(self, max_running: int = 4, keep: int = 200):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self.slots = Slots(max_running, "knowledge-base jobs running", "max_jobs")

    def start(self, kind: str, kb: str, work: Callable[[Callable[[float, str], None]], Any]) -> Job:
        self.slots.acquire()
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, kb=kb)

        def progress(frac: float, msg: str) -> None:
            job.progress, job.message = round(frac, 4), msg

        def run() -> None:
            try:
                job.result = work(progress)
                job.status, job.progress = "done", 1.0
            except KBError as e:
                job.status, job.error = "failed", str(e)
            except Exception as e:  # reported to the caller, never raised into the server
                traceback.print_exc()
                job.status, job.error = "failed", f"internal error: {type(e).__name__}: {e}"
            finally:
                job.finished_at = time.time()
                self.slots.release()

        with self._lock:
            self._jobs[job.id] = job
            if len(self._jobs) > self._keep:
                for old in sorted(self._jobs.values(), key=lambda j: j.started_at)[: len(self._jobs) - self._keep]:
                    if old.status != "running":
                        self._jobs.pop(old.id, None)
        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)


class Services:
    def __init__(self, settings: Settings, backend: LLMBackend | None = None):
        self.settings = settings
        self.kbs = KnowledgeBaseManager(settings)
        self.jobs = Jobs(settings.max_jobs)
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

    def model_name(self) -> str:
        return self.settings.llm_model if self.settings.llm_backend != "openai" else self.settings.openai_model
