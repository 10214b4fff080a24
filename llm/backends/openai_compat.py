"""Any OpenAI-compatible chat server (vLLM, llama-server, FastChat, Ollama's /v1, ...), via the openai client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from llm.backends.base import GenParams, LLMError, Message, check_messages


class OpenAICompatBackend:
    def __init__(self, base_url: str, api_key: str = "EMPTY", model: str = "default", timeout: float = 120.0):
        import openai  # lazy

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        # max_retries=0: a chat user would rather see the error now than wait for silent retries.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)

    def stream(
        self, messages: list[Message], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        params.validate()
        check_messages(messages)
        return self._generate(messages, params, cancel)

    def info(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "n_ctx": None}

    def _generate(self, messages: list[Message], params: GenParams, cancel: threading.Event | None) -> Iterator[str]:
        import httpx
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            kwargs["stop"] = params.stop[:4]  # the OpenAI API accepts at most 4 stop sequences
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as e:  # includes timeouts
            raise LLMError(f"cannot reach the OpenAI-compatible server at {self.base_url}: {e}") from e
        except openai.APIStatusError as e:
            raise LLMError(f"the OpenAI-compatible server at {self.base_url} answered {e.status_code}: "
                           f"{_message(e)}") from e
        try:
            for chunk in response:
                if cancel is not None and cancel.is_set():
                    return
                for choice in chunk.choices or []:
                    text = getattr(choice.delta, "content", None) if choice.delta else None
                    if text:
                        yield text
        except (openai.APIError, httpx.HTTPError) as e:
            raise LLMError(f"the OpenAI-compatible server at {self.base_url} failed mid-answer: {e}") from e
        finally:
            response.close()  # drops the HTTP connection, which makes the server stop generating


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))
