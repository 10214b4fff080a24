"""Backend selection from settings. Importing this package loads no heavy library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm.backends.base import GenParams, LLMBackend, LLMError, complete

__all__ = ["GenParams", "LLMBackend", "LLMError", "complete", "create_backend"]


def create_backend(settings: Any) -> LLMBackend:
    """Build the backend named by ``settings.llm_backend`` (llamacpp | transformers | openai)."""
    kind = settings.llm_backend
    if kind == "llamacpp":
        from llm.backends.llamacpp import LlamaCppBackend
        from llm.models import resolve_gguf

        path = resolve_gguf(settings.llm_model, settings.models_dir)
        return LlamaCppBackend(path, n_ctx=settings.n_ctx, n_threads=settings.n_threads, name=settings.llm_model,
                               socket_dir=settings.tmp_dir, slots=getattr(settings, "llm_slots", 1),
                               n_ubatch=getattr(settings, "llm_ubatch", None))
    if kind == "transformers":
        from llm.backends.transformers_backend import TransformersBackend

        return TransformersBackend(Path(settings.llm_model).expanduser(), n_threads=settings.n_threads,
                                   trust_remote_code=bool(getattr(settings, "trust_remote_code", False)))
    if kind == "openai":
        from llm.backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(settings.openai_base_url, settings.openai_api_key, settings.openai_model)
    raise LLMError(f"unknown llm_backend '{kind}': use llamacpp, transformers or openai")
