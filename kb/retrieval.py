"""Fusion of an index backend's candidates into ranked hits, with one score meaning in every mode.

- dense:   score = cosine similarity of query and chunk embeddings, clipped to [0, 1].
- keyword: score = BM25 normalised by the best score any chunk could get for this query.
- hybrid:  score = alpha * dense + (1 - alpha) * keyword, computed for every candidate either
           retriever found (the backend fills the missing half exactly, never assumes 0).
A threshold T always means: drop hits whose final score is below T (``kb.service`` applies it, after
an optional rerank).
"""

from __future__ import annotations

from dataclasses import dataclass

from kb.index import Candidate

Ranked = tuple[int, float, float | None, float | None]  # chunk id, score, dense, keyword


@dataclass
class SearchParams:
    top_k: int
    threshold: float
    mode: str  # dense | keyword | hybrid
    alpha: float


def fuse(candidates: list[Candidate], mode: str, alpha: float) -> list[Ranked]:
    """Score each candidate for ``mode`` and rank best first (ties by chunk id, so results are stable)."""
    out: list[Ranked] = []
    for cid, dense, keyword in candidates:
        if mode == "dense":
            score = dense or 0.0
        elif mode == "keyword":
            score = keyword or 0.0
        else:
            score = alpha * (dense or 0.0) + (1 - alpha) * (keyword or 0.0)
        out.append((int(cid), float(score), dense, keyword))
    out.sort(key=lambda r: (-r[1], r[0]))
    return out
