"""Optional cross-encoder rerank stage (a local sentence-transformers CrossEncoder directory).

Reranking changes the order of hits, not their scores: the score keeps its one meaning
(see kb.retrieval) and the cross-encoder's own relevance is reported as ``rerank_score``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from kb.types import Hit, KBError

_cache: dict[str, Callable[[str, list[Hit]], list[Hit]]] = {}
_lock = threading.Lock()


def get_reranker(model_dir: str | None) -> Callable[[str, list[Hit]], list[Hit]] | None:
    if not model_dir:
        return None
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
