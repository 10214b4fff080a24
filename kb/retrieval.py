"""Query -> ranked hits, with one score meaning in every mode.

- dense:   score = cosine similarity of query and chunk embeddings, clipped to [0, 1].
- keyword: score = BM25 normalised by the best score any chunk could get for this query.
- hybrid:  score = alpha * dense + (1 - alpha) * keyword, computed for every candidate either
           retriever found (the missing half is computed exactly, not assumed to be 0).
A threshold T always means: drop hits whose final score is below T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kb.embeddings import Embedder
from kb.store import IndexState
from kb.types import Hit

CANDIDATES = 50  # per retriever, before fusion


@dataclass
class SearchParams:
    top_k: int
    threshold: float
    mode: str  # dense | keyword | hybrid
    alpha: float


def search(
    state: IndexState,
    embedder: Embedder,
    query: str,
    params: SearchParams,
    rerank: Callable[[str, list[Hit]], list[Hit]] | None = None,
) -> list[Hit]:
    query = query.strip()
    if not query or not state.chunks:
        return []
    want = max(params.top_k, 1)
    dense: dict[int, float] = {}
    keyword: dict[int, float] = {}
    qvec: np.ndarray | None = None
    if params.mode in ("dense", "hybrid"):
        qvec = embedder.encode_query(query)
        dense = {cid: max(0.0, min(1.0, s)) for cid, s in state.vectors.search(qvec, max(CANDIDATES, want))}
    if params.mode in ("keyword", "hybrid"):
        keyword = dict(state.bm25.search(query, max(CANDIDATES, want)))

    if params.mode == "dense":
        scored = dense
    elif params.mode == "keyword":
        scored = keyword
    else:
        only_kw = [cid for cid in keyword if cid not in dense]
        if only_kw and qvec is not None:
            sims = state.vectors.vectors(only_kw) @ qvec
            dense.update({cid: float(max(0.0, min(1.0, s))) for cid, s in zip(only_kw, sims, strict=True)})
        keyword.update(state.bm25.scores_for(query, (cid for cid in dense if cid not in keyword)))
        a = params.alpha
        scored = {cid: a * dense.get(cid, 0.0) + (1 - a) * keyword.get(cid, 0.0)
                  for cid in dense.keys() | keyword.keys()}

    ranked = sorted(scored.items(), key=lambda kv: kv[1], reverse=True)
    files = state.manifest["files"]
    hits = []
    for cid, score in ranked:
        chunk = state.chunks.get(cid)
        if chunk is None:
            continue
        hits.append(Hit(
            text=chunk.text, score=round(float(score), 4),
            file=files.get(chunk.file_id, {}).get("name", chunk.file_id), file_id=chunk.file_id,
            page=chunk.page, heading=chunk.heading, chunk_id=cid,
            dense_score=round(dense[cid], 4) if cid in dense else None,
            keyword_score=round(keyword[cid], 4) if cid in keyword else None,
        ))
    if rerank is not None and hits:
        hits = rerank(query, hits[: max(want * 4, 20)])
    return [h for h in hits if h.score >= params.threshold][:want]
