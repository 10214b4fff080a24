"""Files are loaded in long-lived child processes with the same limits as ``kb.loaders.isolate`` (a wall-clock
limit per file, an address-space limit), without paying a process start per file (0.14 s against 0.03 s for a
small markdown file; ~1.5 s of CPU per PDF for Python and PyMuPDF to start, which ingestion would take from
the embedder running beside it).

A worker that times out or dies is killed and replaced; idle workers are reused by the next load, and retired
once their memory has grown by ``MAX_GROWTH_MB`` (or after ``MAX_USES`` loads), so a parser's leaks cannot
accumulate; a retired worker's replacement starts at once, not when the next file waits for it. Requests and
results are JSON lines over the child's stdin and a private copy of its stdout: nothing crossing the process
boundary is unpickled, so a file that subverted its parser still cannot run code in the server.

The workers also count chunks' keyword terms (``count_terms_pooled``): jieba is pure Python, and in the app it
holds the GIL that the embedding thread needs between torch ops (beside a busy Python thread a one-thread encode
took 45x as long, beside a busy process 1.04x).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb.loaders.base import LoaderOptions
from kb.loaders.isolate import child_env, enter_child, from_json, kill_child, request_bytes, timed_out, to_json
from kb.types import LoadedFile, LoadError

# Retired by what a leak costs, memory, not by a count of loads: retiring every 50 loads restarted a worker (0.6 CPU-s
# of Python and PyMuPDF imports, and the wait for it) five times while 256 small markdown files were indexed.
MAX_GROWTH_MB = 256
MAX_USES = 1000
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Workers parse beside the embedder on the same cores and should take the cycles it leaves, not stall its threads.
# Each worker leads a session of its own, and the kernel shares CPU fairly between sessions (autogroups) whatever
# their tasks' nice, so the session's nice is lowered too: without that, embedding calls made while a PDF parsed
# took 2-4x their bare time. Not lower than 10: a starved OCR page would run into the per-file time limit.
NICE = 10
_READY = {"ready": True}  # a worker's first line: started, parsers imported
_idle: dict[int, queue.SimpleQueue[_Worker]] = {}  # by address-space limit
_idle_lock = threading.Lock()


def _idle_queue(max_memory_mb: int) -> queue.SimpleQueue[_Worker]:
    with _idle_lock:
        return _idle.setdefault(max_memory_mb, queue.SimpleQueue())


def load_file_pooled(path: Path, *, name: str | None = None, options: LoaderOptions | None = None) -> LoadedFile:
    """Like ``load_file``, in a pooled child process with the isolation limits."""
    from kb.loaders import precheck

    options = options or LoaderOptions()
    precheck(Path(path), name, options)
    return from_json(_pooled(request_bytes(path, name, options), options))


def count_terms_pooled(texts: Sequence[str], options: LoaderOptions | None = None) -> list[Counter[str]]:
    """``kb.keyword.term_counts`` of each text, counted in a pooled child process (the same counts)."""
    options = options or LoaderOptions()
    try:
        request = json.dumps({"terms": list(texts)}, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not for the pipe; the caller counts in the app
        raise LoadError("text that is not valid Unicode") from None
    counts = _pooled(request, options)
    # A worker that a file subverted must not put anything but counts into the index.
    if not (isinstance(counts, list) and len(counts) == len(texts) and all(isinstance(c, dict) for c in counts)
            and all(type(n) is int for c in counts for n in c.values())):
        raise LoadError("the loader process gave no term counts")
    return [Counter(c) for c in counts]


def _pooled(request: bytes, options: LoaderOptions) -> Any:
    """The ``ok`` of ``request``'s reply from an idle worker (a new one if none is idle); the worker goes back to
    the pool unless it failed or is spent."""
    idle = _idle_queue(options.max_memory_mb)
    try:
        worker = idle.get_nowait()
    except queue.Empty:
        worker = _Worker(options.max_memory_mb)
    try:
        result = worker.ask(request, options.timeout_s)
    except BaseException:
        worker.kill()  # timed out, crashed or interrupted: its state is unknown
        raise
    worker.uses += 1
    if worker.spent():
        worker.kill()
        idle.put(_Worker(options.max_memory_mb))  # starts now, beside this file's splitting and embedding
    else:
        idle.put(worker)
    return result


def prestart(options: LoaderOptions | None = None) -> None:
    """Have one warm worker idle (started, parsers imported), so a job's first file does not wait ~1-3 s for a
    Python start and PyMuPDF's import while the embedder sits idle."""
    options = options or LoaderOptions()
    idle = _idle_queue(options.max_memory_mb)
    if idle.empty():
        worker = _Worker(options.max_memory_mb)
        try:
            worker.wait_ready(60.0)
        except LoadError:
            worker.kill()
            raise
        idle.put(worker)


class _Worker:
    def __init__(self, max_memory_mb: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kb.loaders.worker", str(max_memory_mb)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), start_new_session=True)
        self._buffer = b""
        self.uses = 0
        self.rss_first: int | None = None  # bytes resident after its first load: the baseline for growth

    def rss(self) -> int | None:
        try:
            return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None

    def spent(self) -> bool:
        """Whether to retire it: its memory grew by MAX_GROWTH_MB since its first load, or MAX_USES loads."""
        rss = self.rss()
        if self.rss_first is None:
            self.rss_first = rss
        grown = rss is not None and self.rss_first is not None and rss - self.rss_first > MAX_GROWTH_MB * 2**20
        return grown or self.uses >= MAX_USES

    def ask(self, request: bytes, timeout_s: float) -> Any:
        """One request (a JSON line) and the ``ok`` of its reply; a reply's ``error`` is raised as a LoadError."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(request + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise LoadError("loader crashed (worker exited)") from None
        deadline = time.monotonic() + timeout_s
        reply = json.loads(self._read_line(deadline, timeout_s))
        if reply == _READY:  # a new worker's first line, when nobody waited for it
            reply = json.loads(self._read_line(deadline, timeout_s))
        if "error" in reply:
            raise LoadError(str(reply["error"]))
        return reply["ok"]

    def wait_ready(self, timeout_s: float) -> None:
        """Until the child has imported its parsers (its first line)."""
        if json.loads(self._read_line(time.monotonic() + timeout_s, timeout_s)) != _READY:
            raise LoadError("loader worker did not start")

    def _read_line(self, deadline: float, timeout_s: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise timed_out(timeout_s)
            data = os.read(fd, 1 << 20)
            if not data:
                code = self.proc.wait()
                hint = "; probably out of memory" if code in (-9, -6) else ""
                raise LoadError(f"loader crashed (exit code {code}{hint})")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def kill(self) -> None:
        kill_child(self.proc)


def _serve(max_memory_mb: int) -> None:
    out = enter_child(max_memory_mb)
    os.nice(NICE)
    with contextlib.suppress(OSError):  # no autogroups on this kernel: the nice above is enough
        Path("/proc/self/autogroup").write_text(str(NICE))
    import pymupdf  # noqa: F401  (imported while idle, not when the first PDF waits: ~1 s of CPU)

    from kb.keyword import term_counts
    from kb.loaders import load_file

    out.write(json.dumps(_READY).encode("utf-8") + b"\n")
    out.flush()

    for line in sys.stdin.buffer:
        request = json.loads(line)
        fatal = False
        try:
            if "terms" in request:
                reply: dict[str, Any] = {"ok": [term_counts(t) for t in request["terms"]]}
            else:
                options = LoaderOptions(**request["options"])
                reply = {"ok": to_json(load_file(Path(request["path"]), name=request["name"], options=options))}
        except LoadError as exc:
            reply = {"error": exc.reason}
            fatal = exc.reason == "too large to load in memory"  # the heap may be left in a bad state
        out.write(json.dumps(reply, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
        out.flush()
        if fatal:
            break
    os._exit(0)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
