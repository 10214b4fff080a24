"""Persistent, incrementally updated BM25 index with Chinese and English tokenisation.

Tokens: Chinese runs go through jieba (after Traditional -> Simplified folding with OpenCC, so
a Traditional query finds Simplified text and the reverse); Latin words are lower-cased and
Snowball-stemmed; other scripts fall back to character bigrams.

Scores are normalised into [0, 1]: a chunk's BM25 divided by the most any chunk could score for
this query (every query term present with saturated frequency, i.e. sum of idf * (k1 + 1)).
So 1.0 means "contains every query term many times", independent of query length.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

_K1 = 1.2
_B = 0.75

_TOKEN_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[a-zA-Z][a-zA-Z0-9'\-]*|\d+(?:\.\d+)?|[^\W\d_]+", re.UNICODE)
_HAN_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")  # Han only: what jieba segments (not kb.cjk.CJK)
_LATIN_RE = re.compile(r"[a-zA-Z]")
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were what when where "
    "which who why how with do does did not no can 的 了 是 在 和 与 及 或 也 就 都 而 吗 呢 吧 啊 什么 哪些 哪个 怎么 "
    "如何 为什么 这 那 这个 那个 一个 有 被 把 对 于 中 上 下".split()
)

_tools_lock = threading.Lock()
_tools: dict[str, object] = {}


def _jieba():
    with _tools_lock:
        if "jieba" not in _tools:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            _tools["jieba"] = jieba
    return _tools["jieba"]


def _stemmer():
    with _tools_lock:
        if "stem" not in _tools:
            import Stemmer

            _tools["stem"] = Stemmer.Stemmer("english")
    return _tools["stem"]


def _t2s():
    with _tools_lock:
        if "t2s" not in _tools:
            from opencc import OpenCC

            _tools["t2s"] = OpenCC("t2s")
    return _tools["t2s"]


def _dictionary_files(node: object) -> set[str]:
    """The dictionary files an OpenCC config names, at any depth (segmentation and every conversion step)."""
    if isinstance(node, dict):
        found = {node["file"]} if isinstance(node.get("file"), str) else set()
        return found.union(*(_dictionary_files(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_dictionary_files(v) for v in node))
    return set()


def _traditional() -> re.Pattern[str]:
    """Matches any key of OpenCC's t2s dictionaries. The converter only rewrites text that holds a key, so a run
    with no match is already Simplified; that is ~99.9% of runs in Simplified text, and the converter (pure
    Python, ~10 us a run) was a third of tokenizing time."""
    with _tools_lock:
        if "traditional" not in _tools:
            import opencc

            root = Path(opencc.__file__).parent
            config = json.loads((root / "config" / "t2s.json").read_text(encoding="utf-8"))
            keys: set[str] = set()
            for name in _dictionary_files(config):
                with open(root / "dictionary" / name, encoding="utf-8") as f:  # read as opencc reads them
                    keys.update(line.strip().split("\t")[0] for line in f if line.strip())
            chars = "".join(sorted(k for k in keys if len(k) == 1))
            longer = sorted((k for k in keys if len(k) > 1), key=len, reverse=True)
            _tools["traditional"] = re.compile("|".join([f"[{re.escape(chars)}]", *map(re.escape, longer)]))
    return _tools["traditional"]  # type: ignore[return-value]


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    latin: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if _HAN_RE.match(tok):
            simplified = _t2s().convert(tok) if _traditional().search(tok) else tok  # type: ignore[attr-defined]
            # Search mode also emits the sub-words of long words (苹果手机 -> 苹果, 手机, 苹果手机), so
            # a query and a text segmented differently still share tokens.
            tokens.extend(w for w in _jieba().lcut_for_search(simplified) if w not in _STOP)  # type: ignore[attr-defined]
        elif _LATIN_RE.match(tok):
            low = tok.lower()
            if low not in _STOP:
                latin.append(low)
        elif tok[0].isdigit():
            tokens.append(tok)
        else:  # kana, hangul, cyrillic...: bigrams work without a dictionary
            tokens.extend(tok[i:i + 2] for i in range(max(1, len(tok) - 1)))
    if latin:
        tokens.extend(_stemmer().stemWords(latin))  # type: ignore[attr-defined]
    return tokens


def term_counts(text: str) -> Counter[str]:
    """What the keyword index stores for a chunk: each token and how often it occurs."""
    return Counter(tokenize(text))


class BM25Index:
    """Inverted index: term -> {chunk_id: tf}. Adding and removing chunks is O(chunk length)."""

    def __init__(self) -> None:
        self.postings: dict[str, dict[int, int]] = defaultdict(dict)
        self.lengths: dict[int, int] = {}
        self.total_len = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, ids: Iterable[int], texts: Iterable[str]) -> None:
        for cid, text in zip(ids, texts, strict=True):
            counts = term_counts(text)
            for term, tf in counts.items():
                self.postings[term][cid] = tf
            n = sum(counts.values())
            self.lengths[cid] = n
            self.total_len += n

    def delete(self, ids: Iterable[int]) -> None:
        # One pass over the postings instead of re-tokenising the texts: deletion stays correct
        # even if tokenisation or title prefixes changed since the chunks were indexed.
        gone = {cid for cid in ids if cid in self.lengths}
        if not gone:
            return
        for term in list(self.postings):
            posting = self.postings[term]
            for cid in gone.intersection(posting):
                del posting[cid]
            if not posting:
                del self.postings[term]
        for cid in gone:
            self.total_len -= self.lengths.pop(cid)

    def _score(self, query: str, only: set[int] | None) -> dict[int, float]:
        """Normalised BM25 of every chunk matching a query term (or of the ``only`` chunks)."""
        n = len(self.lengths)
        query_terms = set(tokenize(query))
        terms = [t for t in query_terms if t in self.postings]
        if not n or not terms:
            return {}
        avg = self.total_len / n
        scores: dict[int, float] = defaultdict(float)
        best_possible = 0.0
        for term in terms:
            posting = self.postings[term]
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            best_possible += idf * (_K1 + 1)
            for cid in posting.keys() & only if only is not None else posting:
                tf = posting[cid]
                norm = _K1 * (1 - _B + _B * self.lengths[cid] / avg)
                scores[cid] += idf * tf * (_K1 + 1) / (tf + norm)
        # Terms the corpus lacks still count in the maximum: a query half made of unknown words
        # cannot reach a full keyword score.
        best_possible += (len(query_terms) - len(terms)) * math.log(1 + (n + 0.5) / 0.5) * (_K1 + 1)
        return {cid: min(1.0, s / best_possible) for cid, s in scores.items()}

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """Top-k (chunk id, normalised score in [0, 1])."""
        return sorted(self._score(query, None).items(), key=lambda kv: kv[1], reverse=True)[:k]

    def scores_for(self, query: str, ids: Iterable[int]) -> dict[int, float]:
        """Normalised scores of chosen chunks only (those without a query term are left out)."""
        wanted = set(ids)
        return self._score(query, wanted) if wanted else {}

    # Persistence as plain JSON (never a pickle: a KB folder copied in from elsewhere must not run code).
    def to_json(self) -> bytes:
        postings = {term: [[cid, tf] for cid, tf in posting.items()] for term, posting in self.postings.items()}
        lengths = [[cid, n] for cid, n in self.lengths.items()]
        return json.dumps({"postings": postings, "lengths": lengths}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> BM25Index:
        state = json.loads(data)
        idx = cls()
        idx.postings = defaultdict(dict, {term: {int(c): int(tf) for c, tf in pairs}
                                          for term, pairs in state["postings"].items()})
        idx.lengths = {int(c): int(n) for c, n in state["lengths"]}
        idx.total_len = sum(idx.lengths.values())
        return idx
