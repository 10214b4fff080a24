"""Backend-neutral types: generation parameters, the user-facing error and the backend protocol."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


class LLMError(Exception):
    """A user-facing error: the message is shown as is in the UI, CLI and API."""

    status_code = 502


@dataclass
class GenParams:
    temperature: float = 0.3
    top_p: float = 0.9
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Reject nonsense early, with a message naming the field (servers are lenient or cryptic)."""

        def number(name: str, value: Any, lo: float, hi: float) -> None:
            if isinstance(value, bool) or not isinstance(value, Real) or not lo <= value <= hi:
                raise LLMError(f"invalid generation parameter {name}={value!r}: expected a number in [{lo}, {hi}]")

        number("temperature", self.temperature, 0.0, 2.0)
        number("top_p", self.top_p, 0.0, 1.0)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise LLMError(f"invalid generation parameter max_tokens={self.max_tokens!r}: expected an integer >= 1")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise LLMError(f"invalid generation parameter stop={self.stop!r}: expected a list of non-empty strings")


@runtime_checkable
class LLMBackend(Protocol):
    name: str

    def stream(
        self, messages: list[Message], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; stop early when ``cancel`` is set or the generator is closed."""
        ...

    def info(self) -> dict[str, Any]:
        """At least ``{"backend": ..., "model": ..., "n_ctx": ...}``."""
        ...


def complete(
    backend: LLMBackend, messages: list[Message], params: GenParams, cancel: threading.Event | None = None
) -> str:
    """Non-streaming helper: the whole answer as one string."""
    gen = backend.stream(messages, params, cancel)
    try:
        return "".join(gen)
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


def check_messages(messages: list[Message]) -> None:
    """Shared shape check so every backend fails the same way on malformed input."""
    if not isinstance(messages, list) or not messages:
        raise LLMError("no messages to send to the model")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise LLMError(f"invalid chat message {m!r}: role must be system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise LLMError(f"invalid chat message {m!r}: content must be a string")
