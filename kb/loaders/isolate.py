"""Run load_file in a child process with a wall-clock and an address-space limit.

A plain ``python -m kb.loaders.isolate`` child (subprocess) is used rather than multiprocessing:
it never re-imports the caller's ``__main__`` (an unguarded app script would re-run in a spawn
child), works the same from any thread, and a segfault/abort in MuPDF or onnxruntime only kills the
child. Request and result travel as JSON over stdin / a private copy of stdout (never a pickle: a file that
subverted its parser must not be able to run code in the server through the result).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from kb.loaders.base import LoaderOptions
from kb.types import Document, LoadedFile, LoadError

_ROOT = Path(__file__).resolve().parents[2]  # the directory that contains the kb package


def _fmt_seconds(s: float) -> str:
    return f"{s:g}"


def to_json(loaded: LoadedFile) -> dict[str, Any]:
    return asdict(loaded)


def from_json(data: dict[str, Any]) -> LoadedFile:
    data = dict(data)
    return LoadedFile(docs=[Document(**d) for d in data.pop("docs")], **data)


def request_bytes(path: Path, name: str | None, options: LoaderOptions) -> bytes:
    return json.dumps({"path": str(path), "name": name, "options": asdict(options)}).encode()


def child_env() -> dict[str, str]:
    """The environment of a loader child: it imports the kb package from this checkout, never a hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def timed_out(timeout_s: float) -> LoadError:
    return LoadError(f"timed out after {_fmt_seconds(timeout_s)} s")


def run_isolated(path: Path, name: str | None, options: LoaderOptions) -> LoadedFile:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kb.loaders.isolate"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=child_env(), start_new_session=True,
        )
        try:
            out, _ = proc.communicate(request_bytes(path, name, options), timeout=options.timeout_s)
        except subprocess.TimeoutExpired:
            kill_child(proc)
            raise timed_out(options.timeout_s) from None
        except BaseException:
            kill_child(proc)
            raise
        code = proc.returncode
        if out:
            try:
                reply = json.loads(out)
            except ValueError:  # truncated: the child died while writing
                reply = {}
            if "ok" in reply:
                return from_json(reply["ok"])
            if "error" in reply:
                raise LoadError(str(reply["error"]))
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            hint = "; probably out of memory" if sig in ("SIGKILL", "SIGABRT") else ""
            raise LoadError(f"loader crashed ({sig}{hint})")
        err.seek(0, os.SEEK_END)
        err.seek(max(0, err.tell() - 2000))
        tail = err.read().decode("utf-8", "replace").strip().splitlines()
        if any("MemoryError" in line or "bad_alloc" in line for line in tail):
            raise LoadError("too large to load in memory")
        last = tail[-1][:150] if tail else ""
        raise LoadError(f"loader crashed (exit code {code}{': ' + last if last else ''})")


def kill_child(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: nothing else is in it
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def enter_child(max_memory_mb: int) -> BinaryIO:
    """Set up a loader child: limit its memory, send what libraries print to stderr, and return the real
    stdout, which carries only results."""
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import resource

        limit = int(max_memory_mb) * 1024 * 1024
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass  # not fatal: the time limit still applies
    return result


def _child() -> None:
    request = json.loads(sys.stdin.buffer.read())
    path, name, options = request["path"], request["name"], LoaderOptions(**request["options"])
    result = enter_child(options.max_memory_mb)
    from kb.loaders import load_file

    try:
        reply: dict[str, object] = {"ok": to_json(load_file(Path(path), name=name, options=options))}
    except LoadError as exc:
        reply = {"error": exc.reason}
    except MemoryError:
        reply = {"error": "too large to load in memory"}
    data = json.dumps(reply, ensure_ascii=False, default=str).encode("utf-8")
    with result:
        result.write(data)
        result.flush()
    # Skip interpreter teardown: native libraries (onnxruntime threads) sometimes crash on exit.
    os._exit(0)


if __name__ == "__main__":
    _child()
