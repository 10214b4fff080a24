"""llama.cpp backend through xllamacpp: one in-process server per GGUF with ``slots`` parallel sequences.

llama.cpp batches the running slots together (continuous batching), so on a CPU several conversations decode
faster together than one after another. Each slot gets its own ``n_ctx`` window (the server is given
``n_ctx * slots``, which llama.cpp splits evenly). Callers beyond ``slots`` wait here (FIFO-ish, a semaphore);
the app's fair queue (llm/scheduler.py) sits in front and never sends more than ``slots``.

Prompt length policy: nothing is trimmed silently. A prompt longer than ``n_ctx`` raises LLMError (llama.cpp
checks it exactly, with the real tokenizer). A prompt that fits but leaves less room than ``max_tokens`` gets an
answer cut at the end of the window; when no room is left at all, LLMError too. Trimming is the caller's job
(ChatService keeps few history turns and ``top_k`` chunks), because only it knows what is safe to drop.
"""

from __future__ import annotations

import queue
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm.backends.base import GenParams, LLMError, Message, check_messages

_END = object()


# Unix socket paths are limited to 107 bytes (sun_path).
_MAX_SOCKET_PATH = 100


class LlamaCppBackend:
    def __init__(self, model_path: Path, n_ctx: int = 4096, n_threads: int = 2, name: str | None = None,
                 socket_dir: Path | None = None, slots: int = 1, n_batch: int | None = None,
                 n_ubatch: int | None = None):
        import xllamacpp  # lazy: loads a native library

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise LLMError(f"GGUF model file not found: {self.model_path}")
        self.name = name or self.model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        if slots < 1:
            raise LLMError(f"llm_slots must be >= 1, not {slots}")
        self.slots = slots
        self.last_timings: dict[str, Any] | None = None

        p = xllamacpp.CommonParams()
        p.model.path = str(self.model_path)
        # Per-slot windows: llama.cpp divides the total by n_parallel (kv_unified off), so each conversation
        # gets exactly n_ctx and the prompt-length checks keep their meaning.
        p.n_ctx = n_ctx * slots
        p.n_parallel = slots
        p.kv_unified = False
        p.cont_batching = True  # running slots decode in one batch; a new prompt joins without a pause
        if n_batch is not None:
            p.n_batch = n_batch
        if n_ubatch is not None:
            p.n_ubatch = n_ubatch
        self.n_ubatch = int(p.n_ubatch)
        p.cpuparams.n_threads = n_threads
        p.cpuparams_batch.n_threads = n_threads
        p.verbosity = -1
        p.ui = False
        p.offline = True
        # xllamacpp always starts llama.cpp's HTTP server, which we never call (requests go in-process). Keep it
        # unreachable: a Unix socket in a fresh 0700 dir (no TCP port at all), a random key on every route, and
        # a random path prefix so even its key-free /health is not found.
        self._api_key = secrets.token_hex(16)
        p.api_keys = [self._api_key]
        p.api_prefix = "/" + secrets.token_hex(8)
        self.socket_path: Path | None = None
        if socket_dir is not None:
            socket_dir.mkdir(parents=True, exist_ok=True)
            sock = Path(tempfile.mkdtemp(prefix="llama-", dir=socket_dir)) / "s.sock"
            if len(str(sock)) <= _MAX_SOCKET_PATH:
                p.hostnames = [str(sock)]
                self.socket_path = sock
        self.api_prefix = p.api_prefix
        try:
            self._server = xllamacpp.Server(p)
        except RuntimeError as e:
            raise LLMError(f"cannot load GGUF model {self.model_path}: {e} (is the file a complete GGUF?)") from e
        # More direct callers than slots wait here instead of in llama.cpp's deferred queue, where a cancelled
        # request would still start before it noticed the cancel.
        self._free = threading.BoundedSemaphore(slots)
        self._count_lock = threading.Lock()
        self.active = 0  # generations holding a slot
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    # --- public API -------------------------------------------------------------------------
    def stream(
        self, messages: list[Message], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        # Validate eagerly so bad input fails at call time, not at the first next().
        params.validate()
        check_messages(messages)
        body: dict[str, Any] = {
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "cache_prompt": True,  # the KV cache is reused when consecutive prompts share a prefix
        }
        if params.stop:
            body["stop"] = list(params.stop)
        return self._generate(body, cancel)

    def info(self) -> dict[str, Any]:
        return {
            "backend": "llamacpp",
            "model": self.name,
            "path": str(self.model_path),
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "slots": self.slots,
            "n_ubatch": self.n_ubatch,
            "last_timings": self.last_timings,
        }

    @property
    def listening_address(self) -> str:
        """The embedded server's address: ``unix://<socket>``, or loopback TCP when the socket path would be too
        long (needs ``api_prefix`` and ``api_key`` either way)."""
        return str(self._server.listening_address)

    @property
    def api_key(self) -> str:
        return self._api_key

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's own tokenizer (llama.cpp's /tokenize on the private socket)."""
        import httpx

        with self._tokenizer_lock:
            if self._tokenizer is None:
                address = self.listening_address
                if self.socket_path is not None:
                    transport = httpx.HTTPTransport(uds=str(self.socket_path))
                    self._tokenizer = httpx.Client(transport=transport, base_url="http://llama", timeout=30)
                else:
                    base = address if "://" in address else f"http://{address}"
                    self._tokenizer = httpx.Client(base_url=base, timeout=30)
            client = self._tokenizer
        r = client.post(self.api_prefix + "/tokenize", json={"content": text},
                        headers={"Authorization": f"Bearer {self._api_key}"})
        r.raise_for_status()
        return len(r.json()["tokens"])

    # --- internals ----------------------------------------------------------------------------
    def _generate(self, body: dict[str, Any], cancel: threading.Event | None) -> Iterator[str]:
        q: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()  # set when the consumer goes away (close / GeneratorExit / error)
        started = threading.Event()  # set once the worker holds a slot and generates
        worker = threading.Thread(target=self._run, args=(body, q, stop, started, cancel), daemon=True,
                                  name="llamacpp-gen")
        worker.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, LLMError):
                    raise item
                yield item
        finally:
            stop.set()
            # A generating worker stops at its next token; waiting for it makes close() leave the slot free and
            # leaves no native call running at interpreter exit. A still-queued worker is not waited for (it
            # would mean waiting behind other users): it skips its turn by itself.
            if started.is_set():
                worker.join(timeout=60)

    def _run(self, body: dict[str, Any], q: queue.Queue[Any], stop: threading.Event, started: threading.Event,
             cancel: threading.Event | None) -> None:
        def halted() -> bool:
            return stop.is_set() or (cancel is not None and cancel.is_set())

        try:
            # Poll so a request cancelled while queued behind others never runs.
            while not self._free.acquire(timeout=0.1):
                if halted():
                    return
            with self._count_lock:
                self.active += 1
            try:
                started.set()
                if not halted():
                    self._run_locked(body, q, halted)
            finally:
                with self._count_lock:
                    self.active -= 1
                self._free.release()
        except LLMError as e:
            q.put(e)
        except ValueError as e:  # xllamacpp raises ValueError for malformed requests
            q.put(LLMError(f"llama.cpp rejected the request: {e}"))
        except Exception as e:  # surfaced to the consumer as a user-facing error
            q.put(LLMError(f"llama.cpp generation failed: {type(e).__name__}: {e}"))
        finally:
            q.put(_END)

    def _run_locked(self, body: dict[str, Any], q: queue.Queue[Any], halted) -> None:
        state: dict[str, Any] = {"produced": False, "timings": None, "error": None}

        def on_chunk(chunk: dict[str, Any]) -> bool:
            try:
                if "error" in chunk:
                    state["error"] = chunk["error"]
                    return True
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        state["produced"] = True
                        q.put(text)
                if chunk.get("timings"):
                    state["timings"] = chunk["timings"]
                return halted()  # True tells llama.cpp to stop generating
            except Exception:  # never let an exception cross the native callback
                return True

        result = self._server.handle_chat_completions(body, on_chunk)
        error = state["error"] or (result.get("error") if isinstance(result, dict) else None)
        if error:
            raise self._to_error(error)
        timings = state["timings"]
        if timings:
            self.last_timings = timings
            used = int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0))
            if not state["produced"] and not halted() and used + int(timings.get("predicted_n", 0)) >= self.n_ctx - 1:
                raise LLMError(
                    f"the prompt ({used} tokens) fills the model's whole context window ({self.n_ctx} tokens); "
                    "use fewer retrieved chunks (top_k) or history turns, or raise n_ctx"
                )

    def _to_error(self, error: Any) -> LLMError:
        if not isinstance(error, dict):
            return LLMError(f"llama.cpp error: {error}")
        if error.get("type") == "exceed_context_size_error":
            return LLMError(
                f"the prompt is too long for the model: {error.get('n_prompt_tokens', '?')} tokens, but the context "
                f"window is {error.get('n_ctx', self.n_ctx)} tokens; use fewer retrieved chunks (top_k) or history "
                "turns, or raise n_ctx"
            )
        return LLMError(f"llama.cpp rejected the request: {error.get('message', error)}")
