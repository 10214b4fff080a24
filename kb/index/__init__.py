"""Index backends: the derived, searchable copy of a KB's chunks (vectors + keyword index).

The database (``kb.db``) is the source of truth for what a KB contains; an index holds, per chunk id,
its vector and its keyword terms, and nothing else. Every operation is idempotent (``add`` upserts,
``delete`` of a missing id is a no-op), so a crash between "DB committed" and "index updated" heals by
re-running it (``kb.service`` reconciles on start-up).

An *index* is named by a string like ``kb3_g2`` (KB row id 3, generation 2): a rebuild fills the next
generation beside the live one and the KB switches to it in one DB transaction.

Scores: ``search`` returns ``(chunk_id, dense, keyword)`` with
- dense   = cosine of the (L2-normalised) query and chunk vectors, clipped to [0, 1];
- keyword = BM25 divided by the most any chunk could score for this query (each query term present with
            saturated frequency: sum of idf * (k1 + 1)), so in [0, 1], 1.0 = every query term, often.
In ``hybrid`` mode both halves are filled for every candidate either retriever found (computed exactly for
the candidate, never assumed 0). Fusion, thresholds and reranking live above, in ``kb.retrieval``, so every
backend gives a score the same meaning. Normalising BM25 needs the engine's term statistics, which is why it
happens here and not above.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from configs.settings import Settings

MODES = ("dense", "keyword", "hybrid")
CANDIDATES = 50  # per retriever, before fusion
_INDEX_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

Candidate = tuple[int, float | None, float | None]  # chunk id, dense, keyword


def check_index_name(index: str) -> str:
    if not _INDEX_NAME.match(index):
        raise ValueError(f"bad index name {index!r}")
    return index


class IndexBackend(Protocol):
    def add(self, index: str, dim: int, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str],
            terms: Sequence[Counter[str]] | None = None) -> None:
        """Upsert chunks: ``vectors`` float32 (n, dim) L2-normalised; ``texts`` are what BM25 indexes. ``terms``:
        each text's ``term_counts`` when the caller already has them (ingestion counts them beside the embedder)."""

    def delete(self, index: str, ids: Sequence[int]) -> None:
        """Remove chunks; unknown ids are ignored."""

    def search(self, index: str, vector: np.ndarray | None, text: str, k: int, mode: str) -> list[Candidate]:
        """Best ``k`` candidates per retriever (dense: needs ``vector``; keyword: ``text``; hybrid: both)."""

    def count(self, index: str) -> int: ...

    def ids(self, index: str) -> np.ndarray:
        """All chunk ids in the index (int64), for reconciliation with the database."""

    def vectors(self, index: str, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` in that order (export without re-embedding)."""

    def drop(self, index: str) -> None:
        """Delete a whole index (an old generation, a failed rebuild's shadow, a deleted KB)."""

    def close(self) -> None: ...


def create_index(settings: Settings) -> IndexBackend:
    """``vector_store``: ``local`` (FAISS + BM25 files under the data dir) or a Milvus URI."""
    spec = settings.vector_store.strip()
    if spec == "local":
        from kb.index.local import LocalIndex

        return LocalIndex(settings.system_dir / "index")
    if spec.startswith(("http://", "https://", "tcp://")):
        from kb.index.milvus import MilvusIndex

        return MilvusIndex(spec, token=settings.milvus_token)
    raise ValueError(f"vector_store must be 'local' or a Milvus URI like http://host:19530, not {spec!r}")
