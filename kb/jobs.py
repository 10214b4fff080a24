"""Durable KB jobs (ingest, rebuild): a plain job table in the database, claimed by any app process.

- A job is a row: queued -> running -> done | failed | cancelled. Its payload names the files by sha256
  (their bytes are in the database), so any process on any machine can run it.
- One running job per KB: claiming locks the KB's row, so writers of one KB queue behind each other
  instead of timing out, and jobs of different KBs run side by side.
- A running job beats its heart every few seconds; a job whose owner stopped beating (killed, machine
  gone) is claimed again and resumed: handlers record each file's result in the same transaction as its
  chunks, so a resumed job skips what was done.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update

from kb.db import Database, JobRow, KBRow
from kb.types import Busy, KBError, KBNotFound

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside a handler when its job was cancelled."""


@dataclass
class JobContext:
    """What a running handler uses to report progress and notice a cancel."""

    queue: JobQueue
    job_id: str
    kb_id: int
    payload: dict[str, Any]
    results: list[Any]  # per-file results so far (persisted with each file's commit)
    listener: Callable[[float, str], None] | None = None
    embedded: int = 0
    _last_write: float = 0.0
    _cancel: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.monotonic)

    def progress(self, frac: float, message: str) -> None:
        """Report progress; the message gets the chunks embedded so far and, once it can be told, the time left."""
        elapsed = time.monotonic() - self._started
        parts = [message, f"{self.embedded} chunks embedded"]
        if 0.05 <= frac < 1.0 and elapsed >= 2.0:
            parts.append(f"~{_duration(elapsed * (1 - frac) / frac)} left")
        message = " · ".join(parts)
        if self.listener:
            self.listener(frac, message)
        now = time.monotonic()
        if now - self._last_write >= 0.5 or frac >= 1.0:
            self._last_write = now
            self.queue._update(self.job_id, progress=round(frac, 4), message=message,
                               chunks_embedded=self.embedded, heartbeat_at=time.time())

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()


def _duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


Handler = Callable[[JobContext], Any]


class JobQueue:
    def __init__(self, db: Database, handlers: dict[str, Handler], max_queued: int = 100, stale_s: float = 20.0):
        self.db = db
        self.max_queued = max_queued
        self.stale_s = stale_s  # a running job not heard from for this long is taken over
        self.heartbeat_s = stale_s / 5
        self.handlers = handlers
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._wake = threading.Condition()

    # --- submitting and watching -----------------------------------------------------------------
    def submit(self, kind: str, kb: KBRow, payload: dict[str, Any], reserve: bool = False) -> dict[str, Any]:
        """Queue a job. ``reserve``: the caller will ``wait`` for it and run it itself (its progress callback
        sees every step); other processes leave it alone while the caller's ``wait`` keeps it fresh."""
        now = time.time()
        token = uuid.uuid4().hex if reserve else None
        if token:  # per waiter, not per process: this process's own workers must leave it alone too
            payload = payload | {"reserved_for": token}
        job = JobRow(id=uuid.uuid4().hex[:16], kind=kind, kb_id=kb.id, kb_name=kb.name, status="queued",
                     payload=payload, message="queued", result=[], created_at=now,
                     heartbeat_at=now if reserve else None)
        with self.db.session() as s:
            active = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.status.in_(("queued", "running")))) or 0
            if active >= self.max_queued:
                raise Busy(f"the server is busy: {active} knowledge-base jobs queued or running "
                           f"(max_queued_jobs={self.max_queued}); retry shortly", retry_after=30)
            s.add(job)
        with self._wake:
            self._wake.notify_all()
        return job.to_dict() | ({"reservation": token} if token else {})

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.db.read() as s:
            job = s.get(JobRow, job_id)
            return job.to_dict() if job else None

    def list(self, kb_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if kb_id is not None:
                q = q.where(JobRow.kb_id == kb_id)
            return [j.to_dict() for j in s.scalars(q)]

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            job = s.get(JobRow, job_id)
            if job is None:
                raise KBNotFound(f"no job '{job_id}'")
            if job.status == "queued":
                job.status, job.finished_at, job.message = "cancelled", time.time(), "cancelled before it started"
            elif job.status == "running":
                job.cancel_requested = True  # the runner stops at its next file or batch
            return job.to_dict()

    # --- running -----------------------------------------------------------------------------------
    def claim(self, job_id: str | None = None, kb_id: int | None = None,
              reservation: str | None = None) -> JobRow | None:
        """Take a queued job (or a running one whose owner died) whose KB has no other live job: ``job_id``
        only, or the oldest of ``kb_id``, or the oldest of any KB."""
        now = time.time()
        stale = now - self.stale_s
        with self.db.session() as s:
            q = select(JobRow).where(JobRow.status.in_(("queued", "running"))).order_by(JobRow.created_at)
            if job_id is not None:
                q = q.where(JobRow.id == job_id)
            if kb_id is not None:
                q = q.where(JobRow.kb_id == kb_id)
            for job in s.scalars(q.with_for_update(skip_locked=True)).all():
                if job.status == "running" and (job.heartbeat_at or 0) > stale:
                    continue
                reserved = (job.payload or {}).get("reserved_for")
                if job.status == "queued" and reserved not in (None, reservation) and (job.heartbeat_at or 0) > stale:
                    continue  # its submitter is waiting to run it
                try:
                    self.db.lock_kb(s, job.kb_id)
                except KBNotFound:
                    continue
                busy = s.scalars(select(JobRow.id).where(
                    JobRow.kb_id == job.kb_id, JobRow.status == "running", JobRow.id != job.id,
                    JobRow.heartbeat_at > stale)).first()
                # Older jobs of the same KB (queued, or orphaned by a dead process) go first, so one KB's jobs
                # run in submission order.
                older = s.scalars(select(JobRow.id).where(
                    JobRow.kb_id == job.kb_id, JobRow.status.in_(("queued", "running")),
                    JobRow.created_at < job.created_at, JobRow.id != job.id)).first()
                if busy or (older and job_id is not None):
                    continue
                resumed = job.status == "running"
                job.status, job.owner, job.heartbeat_at = "running", self.owner, now
                job.started_at = job.started_at or now
                job.message = "resumed after a restart" if resumed else "started"
                s.flush()
                s.expunge(job)
                return job
        return None

    def run(self, job: JobRow, listener: Callable[[float, str], None] | None = None) -> None:
        ctx = JobContext(self, job.id, job.kb_id, dict(job.payload or {}), list(job.result or []), listener)
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(ctx, beat_stop), name=f"beat-{job.id}", daemon=True)
        beat.start()
        status, error, message = "done", None, "done"
        try:
            self.handlers[job.kind](ctx)
        except Cancelled:
            status, message = "cancelled", "cancelled"
        except KBError as e:
            status, error, message = "failed", str(e), str(e)
        except Exception as e:  # reported on the job, never raised into a worker or the server
            traceback.print_exc()
            status, error = "failed", f"internal error: {type(e).__name__}: {e}"
            message = error
        finally:
            beat_stop.set()
            beat.join()
        self._update(job.id, status=status, error=error, message=message, finished_at=time.time(),
                     progress=1.0 if status == "done" else None, chunks_embedded=ctx.embedded, result=ctx.results)

    def _beat(self, ctx: JobContext, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                with self.db.session() as s:
                    job = s.get(JobRow, ctx.job_id)
                    if job is None:
                        ctx._cancel.set()
                        return
                    job.heartbeat_at = time.time()
                    if job.cancel_requested:
                        ctx._cancel.set()
            except Exception:  # a busy database must not kill the job; the next beat retries
                log.warning("job heartbeat failed", exc_info=True)

    def _update(self, job_id: str, **values: Any) -> None:
        values = {k: v for k, v in values.items() if v is not None or k == "error"}
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def wait(self, job_id: str, listener: Callable[[float, str], None] | None = None,
             poll: float = 0.2, reservation: str | None = None) -> dict[str, Any]:
        """Run the job in this thread when it can be claimed (else let its owner run it); return its row.
        Older jobs of the same KB left by a dead process are resumed here first (the CLI has no workers)."""
        while True:
            job = self.claim(job_id, reservation=reservation)
            if job is not None:
                self.run(job, listener)
            else:
                current = self.get(job_id)
                earlier = self.claim(kb_id=current["kb_id"]) if current and current["status"] == "queued" else None
                if earlier is not None:
                    self.run(earlier)
                    continue
            current = self.get(job_id)
            if current is None:
                raise KBNotFound(f"job '{job_id}' vanished (its knowledge base was deleted)")
            if current["status"] in TERMINAL:
                return current
            if current["status"] == "queued":
                self._update(job_id, heartbeat_at=time.time())  # keeps the reservation
            elif listener:
                listener(current["progress"], current["message"])
            time.sleep(poll)

    # --- background workers (the app runs some; the CLI runs its own jobs in the foreground) -------
    def start_workers(self, n: int) -> None:
        self._stop.clear()
        for i in range(n):
            t = threading.Thread(target=self._work, name=f"kb-jobs-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.claim()
                if job is not None:
                    self.run(job)
                    continue
            except Exception:
                log.exception("job worker")
            with self._wake:
                self._wake.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for t in self._workers:
            t.join(timeout=5)
        self._workers.clear()
