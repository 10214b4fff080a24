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


class Jobs:
    def __init__(self, keep: int = 200):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def start(self, kind: str, kb: str, work: Callable[[Callable[[float, str], None]], Any]) -> Job:
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
        self.jobs = Jobs()
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
