"""Optional cross-encoder rerank stage: a local sentence-transformers CrossEncoder directory, or a rerank
server (``http(s)://HOST:PORT/v1/rerank#MODEL``, Cohere/Jina style, or ``.../rerank``, TEI; see kb.remote).

Reranking changes the order of hits, not their scores: the score keeps its one meaning
(see kb.retrieval) and the cross-encoder's own relevance is reported as ``rerank_score``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kb.types import Hit, KBError

if TYPE_CHECKING:
    from kb.remote import RemoteOptions

_cache: dict[object, Callable[[str, list[Hit]], list[Hit]]] = {}
_lock = threading.Lock()


def get_reranker(model_dir: str | None, remote: RemoteOptions | None = None,
                 ) -> Callable[[str, list[Hit]], list[Hit]] | None:
    if not model_dir:
        return None
    if model_dir.lower().startswith(("http://", "https://")):
        from kb.remote import RemoteOptions, RemoteReranker

        options = remote or RemoteOptions(key_setting="rerank_api_key")
        key = (model_dir, *options.cache_key())  # a key fingerprint, never the key itself
        with _lock:
            if key not in _cache:
                _cache[key] = RemoteReranker(model_dir, options)  # no network call: cheap under the lock
            return _cache[key]
    with _lock:
        if model_dir not in _cache:
            path = Path(model_dir).expanduser()
            if not (path / "config.json").is_file():
                raise KBError(f"rerank model directory not found or not a model: {path}")
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(str(path), device="cpu", local_files_only=True)

            def rerank(query: str, hits: list[Hit]) -> list[Hit]:
                scores = model.predict([(query, h.text) for h in hits], activation_fn=None)
                for h, s in zip(hits, scores, strict=True):
                    h.rerank_score = float(s)
                return sorted(hits, key=lambda h: h.rerank_score or 0.0, reverse=True)

            _cache[model_dir] = rerank
        return _cache[model_dir]
